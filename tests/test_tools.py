"""The calculator: correct arithmetic, whitelisted syntax only, bounded time, and no code ever runs."""
import ast
import builtins
import os
import tempfile
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nanochat import tools
from nanochat.tools import calculator


@pytest.mark.parametrize(
    "expr, expected",
    [
        ("1+2*3", "7"),
        ("(1+2)*3", "9"),
        ("2**10", "1024"),
        ("2**3**2", "512"),
        ("-2**2", "-4"),
        ("+5 - -3", "8"),
        ("48/2", "24"),
        ("10/4", "2.5"),
        ("10/3", "3.33333333333"),
        ("7//2", "3"),
        ("-7//2", "-4"),
        ("7%3", "1"),
        ("7.5%2", "1.5"),
        ("2**-2", "0.25"),
        ("0.1+0.2", "0.3"),
        ("1.5e3*2", "3000"),
        ("1,200 * 3", "3600"),
        ("  12  ", "12"),
        ("'strawberry'.count('r')", "3"),
        ('"banana".count("an") + 1', "3"),
        ("'mississippi'.count('ss') * 2", "4"),
        ("10**100", "1" + "0" * 100),
        ("1**(10**100)", "1"),
    ],
)
def test_arithmetic(expr, expected):
    assert calculator(expr) == expected


@pytest.mark.parametrize(
    "expr, fragment",
    [
        ("1/0", "division by zero"),
        ("5 % 0", "division by zero"),
        ("0**-1", "Error"),
        ("__import__('os')", "only 'text'.count('x') calls"),
        ("open('f', 'w')", "calls"),
        ("x + 1", "unknown name"),
        ("(1).real", "attribute access"),
        ("'a'.upper()", "calls"),
        ("'a'.count", "attribute access"),
        ("'abc'.count('a', 1)", "calls"),
        ("'abc'.count(x='a')", "calls"),
        ("'abc'.__class__", "attribute access"),
        ("[1, 2][0]", "not allowed"),
        ("(lambda: 1)()", "calls"),
        ("lambda: 1", "Lambda is not allowed"),
        ("[i for i in (1, 2)]", "not allowed"),
        ("{1: 2}", "not allowed"),
        ("1 if 1 else 2", "not allowed"),
        ("1 < 2", "not allowed"),
        ("True + 1", "only numbers"),
        ("'ab' * 3", "unsupported literal"),
        ("'ab'", "unsupported literal"),
        ("1j * 2", "unsupported literal"),
        ("(-8) ** 0.5", "complex result"),
        ("9**9**9**9", "exponent too large"),
        ("2**100000", "exponent too large"),
        ("10**1000 * 10**1000", "result too large"),
        ("1e308 * 10", "result too large"),
        ("2.0 ** 5000", "result too large"),
        ("import os", "invalid syntax"),
        ("1 +", "invalid syntax"),
        ("", "empty input"),
        ("1" * 2000, "longer than"),
        ("-" * 500 + "1", "too deeply nested"),
        ("(" * 300 + "1" + ")" * 300, "Error"),
    ],
)
def test_refusals_are_short_error_texts(expr, fragment):
    out = calculator(expr)
    assert out.startswith("Error: ") and fragment in out and len(out) < 80


def test_non_text_input():
    assert calculator(None).startswith("Error: ")


def test_huge_exponent_is_refused_fast():
    start = time.perf_counter()
    for expr in ("9**9**9**9", "2**2**2**2**2**2", "99999**99999", "(10**1000)**(10**1000)"):
        assert calculator(expr).startswith("Error: ")
    assert time.perf_counter() - start < 0.1


def test_never_compiles_to_code(monkeypatch):
    """ast.parse is allowed (it only builds a tree); any other compile/eval/exec call would be a bug."""
    real_compile = builtins.compile

    def ast_only_compile(source, filename, mode, flags=0, *args, **kw):
        assert flags & ast.PyCF_ONLY_AST, "calculator compiled code"
        return real_compile(source, filename, mode, flags, *args, **kw)

    def forbidden(*_a, **_k):
        raise AssertionError("calculator called eval/exec")

    monkeypatch.setattr(builtins, "compile", ast_only_compile)
    monkeypatch.setattr(builtins, "eval", forbidden)
    monkeypatch.setattr(builtins, "exec", forbidden)
    assert calculator("3*(4+5)") == "27"
    assert calculator("'aaa'.count('a')") == "3"
    assert calculator("__import__('os').getcwd()").startswith("Error")


# fragments that would do harm if they were ever executed
_DANGER = [
    "__import__('builtins').setattr(__import__('nanochat.tools'), 'PWNED', 1)",
    "setattr(__import__('nanochat').tools, 'PWNED', 1)",
    "open('PWNED', 'w').write('x')",
    "__import__('os').system('touch PWNED')",
    "[c for c in ().__class__.__base__.__subclasses__()]",
    "exec('import os')",
    "eval('1')",
    "(lambda: open('PWNED', 'w'))()",
    "globals()",
    "'x'.count.__globals__",
    "'abc'.count('a').__class__",
    "__builtins__",
    "breakpoint()",
]
_PIECES = _DANGER + [
    "1", "9", "0", "2.5", "1e9", "(", ")", "+", "-", "*", "/", "//", "%", "**", ",", ".", "'",
    "'strawberry'", ".count(", "'r')", "[", "]", "{", "}", ":", "lambda", " ", "if", "else", "for", "in",
    "not", "and", "x", "_", "=", ":=", "\\", "\n", "#", "await", "yield",
]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.one_of(
        st.lists(st.sampled_from(_PIECES), max_size=40).map("".join),
        st.text(alphabet="0123456789+-*/%().e' _abcrxyz[]", max_size=120),
        st.text(max_size=60),
    )
)
def test_fuzz_no_code_runs_and_every_input_is_quick(expr):
    cwd = os.getcwd()
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        try:
            start = time.perf_counter()
            out = calculator(expr)
            elapsed = time.perf_counter() - start
            assert os.listdir(tmp) == []  # no file created
        finally:
            os.chdir(cwd)
    assert isinstance(out, str) and out
    assert elapsed < 1.0, (expr, elapsed)
    assert not hasattr(tools, "PWNED")
    assert len(out) <= 1300  # bounded result (about 1,233 digits at most)
