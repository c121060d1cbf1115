"""Small arithmetic word problems answered with the calculator tool, for teaching tool use without a download.

"What is 37 times 412?" -> text, python ``37*412``, python_output ``15244``, then ``#### 15244``. The output
part is exactly what the engine's calculator (nanochat.tools.calculator) returns for the expression at run
time, so training and generation agree. Example i comes from random.Random(i) (test: i + 10,000,000).
"""
from __future__ import annotations

import random

from nanochat.common import NanochatError
from nanochat.tools import calculator
from nanochat.tasks.base import Task, assistant_text, extract_answer

TEST_SEED_OFFSET = 10_000_000
_WORDS = {"+": ["plus", "added to"], "-": ["minus"], "*": ["times", "multiplied by"], "/": ["divided by"]}
_ASK = [
    "What is {q}?", "what is {q}", "Calculate {q}.", "Compute {q}", "How much is {q}?", "Can you work out {q}?",
    "Please evaluate {q}.", "{q} = ?", "Quick question: what's {q}?",
]
_LEAD = ["Let me use the calculator for this.\n\n", "I'll compute it with Python:\n\n", "Using the calculator:\n\n", ""]


def _number(rng: random.Random, digits: int) -> int:
    return rng.randint(10 ** (digits - 1) if digits > 1 else 0, 10 ** digits - 1)


def make_problem(rng: random.Random) -> tuple[str, str, object]:
    """(question text, python expression, value) for one random problem."""
    if rng.random() < 0.3:  # two operations with parentheses, (a op b) op c
        a, b, c = (_number(rng, rng.randint(1, 3)) for _ in range(3))
        op1, op2 = rng.choice("+-*"), rng.choice("+-*")
        inner = {"+": a + b, "-": a - b, "*": a * b}[op1]
        value = {"+": inner + c, "-": inner - c, "*": inner * c}[op2]
        expr = f"({a}{op1}{b}){op2}{c}"
        return f"({a} {op1} {b}) {op2} {c}", expr, value
    op = rng.choice("+-*/")
    if op == "/":  # exact division: pick the quotient first
        b, q = _number(rng, rng.randint(1, 2)) or 1, _number(rng, rng.randint(1, 3))
        a = b * q
        value = a / b
    else:
        a, b = _number(rng, rng.randint(1, 4)), _number(rng, rng.randint(1, 4))
        value = {"+": a + b, "-": a - b, "*": a * b}[op]
    expr = f"{a}{op}{b}"
    shown = f"{a} {rng.choice(_WORDS[op])} {b}" if rng.random() < 0.5 else f"{a} {op} {b}"
    return shown, expr, value


class Arithmetic(Task):
    name = "arithmetic"

    def __init__(self, size: int = 1000, split: str = "train", **kwargs):
        super().__init__(**kwargs)
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise NanochatError(f"arithmetic size must be a non-negative integer, got {size!r}")
        if split not in ("train", "test"):
            raise NanochatError(f"arithmetic split must be train or test, got {split!r}")
        self.size, self.split = size, split

    @property
    def eval_type(self) -> str:
        return "generative"

    def num_examples(self) -> int:
        return self.size

    def get_example(self, index: int) -> dict:
        rng = random.Random(index + (TEST_SEED_OFFSET if self.split == "test" else 0))
        shown, expr, _ = make_problem(rng)
        answer = calculator(expr)  # the tool's own formatting: 2388/4 -> "597"
        parts = [
            {"type": "text", "text": rng.choice(_LEAD)},
            {"type": "python", "text": expr},
            {"type": "python_output", "text": answer},
            {"type": "text", "text": f"\n\n{shown} = {answer}.\n\n#### {answer}"},
        ]
        if not parts[0]["text"]:
            parts = parts[1:]
        return {"messages": [
            {"role": "user", "content": rng.choice(_ASK).format(q=shown)},
            {"role": "assistant", "content": parts},
        ]}

    def evaluate(self, conversation: dict, completion: str) -> int:
        reference = extract_answer(assistant_text(conversation))
        return int(reference is not None and extract_answer(completion) == reference)
