"""MMLU multiple choice (cais/mmlu): ``auxiliary_train`` (100K questions) for mid-training, ``dev``/``test`` for eval.

Each question becomes a user prompt listing the four choices as "choice=A" lines and an assistant reply that is
just the letter; the conversation carries ``letters`` ("A".."D") so evaluation can take the argmax over them.
"""
from __future__ import annotations

from nanochat.common import NanochatError
from nanochat.tasks.base import RowsTask, render_mc
from nanochat.tasks.sources import check_columns, load_rows

LETTERS = ("A", "B", "C", "D")


class MMLU(RowsTask):
    EVAL_TYPE = "categorical"
    name = "mmlu"

    def __init__(self, subset: str = "all", split: str = "test", local_path=None, **kwargs):
        super().__init__(**kwargs)
        if subset == "auxiliary_train" and split != "train":
            raise NanochatError(f"mmlu auxiliary_train only has the split 'train', got {split!r}")
        if subset != "auxiliary_train" and split not in ("dev", "validation", "test"):
            raise NanochatError(f"mmlu split must be dev, validation or test (or subset=auxiliary_train), got {split!r}")
        self.subset, self.split = subset, split
        ds = load_rows("cais/mmlu", subset, split, local_path=local_path)
        # The Hub's auxiliary_train rows are wrapped in a struct column "train"; local copies may be flat.
        self._wrapped = "train" in ds.column_names and "question" not in ds.column_names
        if not self._wrapped:
            check_columns(ds, ("question", "choices", "answer"), str(local_path or "cais/mmlu"))
        self.ds = ds

    def get_example(self, index: int) -> dict:
        row = self.ds[index]
        if self._wrapped:
            row = row["train"]
        choices, answer = list(row["choices"]), row["answer"]
        if len(choices) != 4 or not isinstance(answer, int) or not 0 <= answer < 4:
            raise NanochatError(f"mmlu row {index}: expected 4 choices and an answer index 0..3")
        return {
            "messages": [
                {"role": "user", "content": render_mc(row["question"], LETTERS, choices)},
                {"role": "assistant", "content": LETTERS[answer]},
            ],
            "subject": row.get("subject", ""),
            "letters": list(LETTERS),
        }

    def evaluate(self, conversation: dict, completion: str) -> bool:
        return completion.strip() == conversation["messages"][-1]["content"]
