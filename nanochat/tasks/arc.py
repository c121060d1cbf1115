"""ARC-Easy and ARC-Challenge science questions (allenai/ai2_arc), as letter-choice conversations.

Choices keep their own labels (usually A-D, sometimes 1-4 or five of them); the conversation carries them as
``letters`` so evaluation takes the argmax over exactly those labels.
"""
from __future__ import annotations

from nanochat.common import NanochatError
from nanochat.tasks.base import RowsTask, render_mc
from nanochat.tasks.sources import load_rows

SUBSETS = ("ARC-Easy", "ARC-Challenge")


class ARC(RowsTask):
    EVAL_TYPE = "categorical"
    name = "arc"

    def __init__(self, subset: str = "ARC-Easy", split: str = "test", local_path=None, **kwargs):
        super().__init__(**kwargs)
        if subset not in SUBSETS:
            raise NanochatError(f"arc subset must be one of {', '.join(SUBSETS)}, got {subset!r}")
        if split not in ("train", "validation", "test"):
            raise NanochatError(f"arc split must be train, validation or test, got {split!r}")
        self.subset, self.split = subset, split
        self.ds = load_rows("allenai/ai2_arc", subset, split, local_path=local_path,
                            columns=("question", "choices", "answerKey"))

    def get_example(self, index: int) -> dict:
        row = self.ds[index]
        choices = row["choices"]
        if not isinstance(choices, dict) or "text" not in choices or "label" not in choices:
            raise NanochatError(f"arc row {index}: 'choices' must have 'text' and 'label' lists")
        letters, texts, answer = list(choices["label"]), list(choices["text"]), row["answerKey"]
        if answer not in letters or len(letters) != len(texts):
            raise NanochatError(f"arc row {index}: answer {answer!r} is not one of the labels {letters}")
        return {
            "messages": [
                {"role": "user", "content": render_mc(row["question"], letters, texts)},
                {"role": "assistant", "content": answer},
            ],
            "letters": letters,
        }

    def evaluate(self, conversation: dict, completion: str) -> bool:
        return completion.strip() == conversation["messages"][-1]["content"]
