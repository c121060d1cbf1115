"""Your own conversations from a JSONL file: one conversation per line, validated when the file is loaded.

Each line is ``{"messages": [...]}`` (extra keys kept) or just the list of messages; the format is the one of
nanochat.chat (optional system message, user/assistant alternating, assistant parts for tool calls).
"""
from __future__ import annotations

import json
from pathlib import Path

from nanochat.chat import validate_conversation
from nanochat.common import NanochatError
from nanochat.tasks.base import Task


class Conversations(Task):
    name = "conversations"

    def __init__(self, path: str | None = None, **kwargs):
        super().__init__(**kwargs)
        if path is None:
            raise NanochatError("the conversations task needs path=<a .jsonl file with one conversation per line>")
        path = Path(path).expanduser()
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except OSError as e:
            raise NanochatError(f"cannot read conversations file {path}: {e.strerror or e}") from None
        self.path, self.conversations = path, []
        for lineno, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except json.JSONDecodeError as e:
                raise NanochatError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
            conversation = item if isinstance(item, dict) else {"messages": item}
            try:
                validate_conversation(conversation)
            except NanochatError as e:
                raise NanochatError(f"{path}:{lineno}: {e}") from None
            self.conversations.append(conversation)

    def num_examples(self) -> int:
        return len(self.conversations)

    def get_example(self, index: int) -> dict:
        return self.conversations[index]
