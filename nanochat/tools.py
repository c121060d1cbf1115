"""Tools the chat model may call during generation; today, the calculator.

The one idea: the model's code is untrusted text, so it is never handed to eval/exec/compile. It is parsed
with `ast` and walked by a tiny interpreter that only knows a whitelist of nodes (number literals, + - * /
// % ** and unary signs, and `'literal'.count('literal')`). Everything else, and anything too long, too deep
or too big, comes back as a short "Error: ..." string that the model reads as the tool's output.
"""
from __future__ import annotations

import ast
import math
import operator
import re
import warnings

MAX_INPUT_CHARS = 1000  # longer code is refused before parsing
MAX_DEPTH = 100  # nesting of the syntax tree
MAX_INT_BITS = 4096  # about 1,233 decimal digits: every intermediate and the result
MAX_STR_CHARS = 1000  # string literals (only ever the receiver/argument of .count)

_BINARY = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
_UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}


class CalculatorError(Exception):
    """A refusal or failure; its message becomes the tool output after "Error: "."""


def _check_number(x):
    if isinstance(x, int) and x.bit_length() > MAX_INT_BITS:
        raise CalculatorError("result too large")
    if isinstance(x, float) and not math.isfinite(x):
        raise CalculatorError("result too large" if math.isinf(x) else "result is not a number")
    return x


def _power(base, exp):
    if isinstance(base, int) and isinstance(exp, int):
        if base in (0, 1, -1) and exp >= 0:
            return base**exp
        if exp < 0:
            if abs(exp) > MAX_INT_BITS:
                raise CalculatorError("exponent too large")
            return float(base) ** exp
        # |base**exp| has about exp * log2|base| bits: refuse before computing anything huge
        if base.bit_length() * exp > MAX_INT_BITS + base.bit_length():
            raise CalculatorError("exponent too large")
        return base**exp
    try:
        result = float(base) ** float(exp)  # floats: bounded cost; overflow raises
    except OverflowError:
        raise CalculatorError("result too large") from None
    if isinstance(result, complex):
        raise CalculatorError("complex result")
    return result


def _number(node) -> int | float:
    if not isinstance(node, ast.Constant) or isinstance(node.value, bool):
        raise CalculatorError("only numbers are allowed here")
    if isinstance(node.value, (int, float)):
        return _check_number(node.value)
    raise CalculatorError(f"unsupported literal {type(node.value).__name__}")


def _string(node) -> str:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        if len(node.value) > MAX_STR_CHARS:
            raise CalculatorError("string too long")
        return node.value
    raise CalculatorError(".count() needs a string literal")


def _eval(node, depth: int):
    if depth > MAX_DEPTH:
        raise CalculatorError("expression too deeply nested")
    if isinstance(node, ast.Expression):
        return _eval(node.body, depth + 1)
    if isinstance(node, ast.Constant):
        return _number(node)
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _eval(node.left, depth + 1), _eval(node.right, depth + 1)
        if isinstance(node.op, ast.Pow):
            return _check_number(_power(left, right))
        try:
            return _check_number(_BINARY[type(node.op)](left, right))
        except ZeroDivisionError:
            raise CalculatorError("division by zero") from None
        except OverflowError:
            raise CalculatorError("result too large") from None
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_eval(node.operand, depth + 1))
    if isinstance(node, ast.Call):
        func = node.func
        # the one allowed call: 'literal'.count('literal')
        if (
            isinstance(func, ast.Attribute)
            and func.attr == "count"
            and not node.keywords
            and len(node.args) == 1
        ):
            return _string(func.value).count(_string(node.args[0]))
        raise CalculatorError("only 'text'.count('x') calls are allowed")
    if isinstance(node, ast.Attribute):
        raise CalculatorError("attribute access is not allowed")
    if isinstance(node, ast.Name):
        raise CalculatorError(f"unknown name {node.id[:20]!r}")
    raise CalculatorError(f"{type(node).__name__} is not allowed")


def format_number(x) -> str:
    """Integers as digits; integral floats without '.0' (GSM8K style); others to 12 significant digits."""
    if isinstance(x, float):
        if x.is_integer() and abs(x) < 1e15:
            return str(int(x))
        return f"{x:.12g}"
    return str(x)


def calculator(expr: str) -> str:
    """Evaluate arithmetic or `'text'.count('x')`; always returns text (a result or "Error: ...")."""
    if not isinstance(expr, str):
        return "Error: expected text"
    if len(expr) > MAX_INPUT_CHARS:
        return f"Error: input longer than {MAX_INPUT_CHARS} characters"
    text = expr.strip()
    if "'" not in text and '"' not in text:  # thousands separators are common in word problems: "1,200 * 3"
        text = _THOUSANDS.sub("", text)
    if not text:
        return "Error: empty input"
    try:
        with warnings.catch_warnings():  # e.g. "1if" warns about invalid literals; the text is data, stay quiet
            warnings.simplefilter("ignore")
            tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError):
        return "Error: invalid syntax"
    except (RecursionError, MemoryError):
        return "Error: expression too deeply nested"
    try:
        return format_number(_eval(tree, 0))
    except CalculatorError as e:
        return f"Error: {e}"
    except (RecursionError, MemoryError):
        return "Error: expression too deeply nested"
    except (ArithmeticError, TypeError, ValueError) as e:
        return f"Error: {type(e).__name__}"
