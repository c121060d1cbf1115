"""GSM8K grade-school math (openai/gsm8k), with its calculator annotations turned into tool calls.

The one idea: a solution such as ``48/2 = <<48/2=24>>24 clips`` becomes assistant parts
``text "48/2 = "`` + ``python "48/2"`` + ``python_output "24"`` + ``text "24 clips"``, so the model learns to
call the calculator (supervised) and read its result (not supervised). Scoring compares the number after
``####`` in the completion with the reference answer, commas removed, as strings.
"""
from __future__ import annotations

import re

from nanochat.common import NanochatError
from nanochat.tasks.base import RowsTask, assistant_text, extract_answer
from nanochat.tasks.sources import load_rows

_CALL = re.compile(r"(<<[^>]+>>)")


def answer_to_parts(answer: str) -> list[dict]:
    """GSM8K's annotated solution -> text / python / python_output parts (empty text parts dropped)."""
    parts = []
    for piece in _CALL.split(answer):
        if piece.startswith("<<") and piece.endswith(">>"):
            inner = piece[2:-2]
            # "a*b=c": the last "=" separates the expression from its result; without one there is no result
            expr, result = inner.rsplit("=", 1) if "=" in inner else (inner, "")
            parts.append({"type": "python", "text": expr})
            parts.append({"type": "python_output", "text": result})
        elif piece:
            parts.append({"type": "text", "text": piece})
    return parts


class GSM8K(RowsTask):
    EVAL_TYPE = "generative"
    name = "gsm8k"

    def __init__(self, subset: str = "main", split: str = "train", local_path=None, **kwargs):
        super().__init__(**kwargs)
        if subset not in ("main", "socratic"):
            raise NanochatError(f"gsm8k subset must be main or socratic, got {subset!r}")
        if split not in ("train", "test"):
            raise NanochatError(f"gsm8k split must be train or test, got {split!r}")
        self.ds = load_rows("openai/gsm8k", subset, split, local_path=local_path, columns=("question", "answer"))

    def get_example(self, index: int) -> dict:
        row = self.ds[index]
        return {"messages": [
            {"role": "user", "content": row["question"]},
            {"role": "assistant", "content": answer_to_parts(row["answer"])},
        ]}

    def evaluate(self, conversation: dict, completion: str) -> int:
        """1 if the completion's '#### N' equals the reference answer, else 0."""
        reference = extract_answer(assistant_text(conversation))
        return int(reference is not None and extract_answer(completion) == reference)
