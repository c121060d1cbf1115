"""SmolTalk general conversations (HuggingFaceTB/smol-smoltalk: 460K train, 24K test), checked on access.

Rows are already in our conversation format (a ``messages`` list, optional system message first); each is
validated with nanochat.chat.validate_conversation so a malformed row fails with its index and the reason.
"""
from __future__ import annotations

from nanochat.chat import validate_conversation
from nanochat.common import NanochatError
from nanochat.tasks.base import RowsTask
from nanochat.tasks.sources import load_rows


class SmolTalk(RowsTask):
    name = "smoltalk"

    def __init__(self, split: str = "train", local_path=None, **kwargs):
        super().__init__(**kwargs)
        if split not in ("train", "test"):
            raise NanochatError(f"smoltalk split must be train or test, got {split!r}")
        self.split = split
        self.ds = load_rows("HuggingFaceTB/smol-smoltalk", None, split, local_path=local_path, columns=("messages",))

    def get_example(self, index: int) -> dict:
        messages = [{"role": m["role"], "content": m["content"]} for m in self.ds[index]["messages"]]
        try:
            validate_conversation(messages)
        except NanochatError as e:
            raise NanochatError(f"smoltalk {self.split} row {index}: {e}") from None
        return {"messages": messages}
