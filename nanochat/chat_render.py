"""A chat reply kept as parts, a readable view of its tool calls, and fitting a chat into the model's context.

The one idea: the server streams a reply as deltas tagged with the part they belong to (``text`` /
``python`` / ``python_output``: the model's calculator call ``<|python_start|>12*12<|python_end|>`` and the
tool's ``<|output_start|>144<|output_end|>``). Kept as those parts (nanochat/chat.py's assistant content), the
reply is sent back to render to the same special tokens, so the model sees its own tool use; the same parts
give the readable view ("calculator: 12*12 = 144") instead of raw special-token text.
"""
from __future__ import annotations

import re

from nanochat.common import NanochatError

TITLE_CHARS = 60  # code or result shown in a tool call's one-line title


class DoesNotFit(NanochatError):
    """The newest message cannot be answered within the model's context or the server's limits."""


def extend_reply(parts: list[dict], kind: str, text: str) -> None:
    """Add one streamed delta (its part kind and text) to a reply kept as parts; empty parts are never made."""
    if parts and parts[-1]["type"] == kind:
        parts[-1]["text"] += text
    elif text:
        parts.append({"type": kind, "text": text})


def sendable(parts: list[dict]) -> list[dict]:
    """A reply's parts as nanochat.chat accepts them back: blank calls (a reply cut short) and their output,
    and outputs with no call before them, left out."""
    out: list[dict] = []
    for part in parts:
        if part["type"] == "python" and not part["text"].strip():
            continue
        if part["type"] == "python_output" and not (out and out[-1]["type"] == "python"):
            continue
        out.append(dict(part))
    return out


class Reply:
    """A reply as it streams, for a plain-text view (the API's `content`, the chat CLI): its parts, and each delta
    in readable form, tool use framed as `[calculator: 12*12 = 144]`."""

    def __init__(self):
        self.parts: list[dict] = []
        self.open = False  # inside a "[calculator: ..." frame

    def add(self, kind: str, text: str) -> str:
        """Record a delta; return its readable form."""
        if not text:  # part boundaries matter only once the next part has text
            return ""
        last = self.parts[-1]["type"] if self.parts else None
        frame = ""
        if kind != last:
            if kind == "text":
                frame = "]" if self.open else ""
            elif kind == "python":
                frame = ("] " if self.open else "") + "[calculator: "
            else:
                frame = " = " if self.open else "[calculator = "
            self.open = kind != "text"
        extend_reply(self.parts, kind, text)
        return frame + text

    def close(self) -> str:
        """What ends the readable text: the bracket of a tool call the reply stopped inside."""
        end, self.open = ("]" if self.open else ""), False
        return end

    @property
    def tool_use(self) -> bool:
        return any(part["type"] != "text" for part in self.parts)

    def content(self):
        """The reply as a message's content: a string, or chat.py's parts when it used the tool."""
        parts = sendable(self.parts)
        if all(part["type"] == "text" for part in parts):
            return "".join(part["text"] for part in parts)
        return parts


def _one_line(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= TITLE_CHARS else text[: TITLE_CHARS - 1] + "…"


def tool_title(code: str, output: str | None) -> str:
    """The one-line summary of a calculator call: "calculator: 12*12 = 144" (no result yet: "calculator: 12*12")."""
    title = f"calculator: {_one_line(code)}"
    return title if output is None else f"{title} = {_one_line(output)}"


def fence(text: str, lang: str = "") -> str:
    """A markdown code block that shows `text` verbatim: the fence is longer than any backtick run in it."""
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    ticks = "`" * max(3, longest + 1)
    return f"{ticks}{lang}\n{text}\n{ticks}"


def _chars(message: dict) -> int:
    content = message["content"]
    return len(content) if isinstance(content, str) else sum(len(p["text"]) for p in content)


def fit_conversation(tokenizer, messages: list[dict], context: int, room: int, max_messages: int | None = None,
                     max_chars: int | None = None) -> tuple[list[int], list[dict], int]:
    """Drop the oldest user/assistant exchanges until the prompt leaves `room` tokens for the answer.

    `messages`: an optional system message, then user/assistant alternating, ending with the user. The system
    message and the newest user message are always kept. Returns (prompt ids, kept messages, exchanges dropped).
    When even the newest message alone leaves no room, DoesNotFit says so.
    """
    from nanochat.chat import render_for_completion

    head = messages[:1] if messages and messages[0]["role"] == "system" else []
    body, last = messages[len(head):-1], messages[-1:]
    pairs = len(body) // 2
    for dropped in range(pairs + 1):
        kept = head + body[2 * dropped:] + last
        if max_messages is not None and len(kept) > max_messages:
            continue
        if max_chars is not None and sum(map(_chars, kept)) > max_chars:
            continue
        ids = render_for_completion(tokenizer, {"messages": kept})
        if len(ids) + room <= context or (dropped == pairs and len(ids) < context):
            return ids, kept, dropped
    ids = render_for_completion(tokenizer, {"messages": head + last})
    with_system = " with the system prompt" if head else ""
    if len(ids) >= context:
        raise DoesNotFit(f"Your message is {len(ids)} tokens{with_system}, and this model's context is only "
                         f"{context} tokens, so it cannot be answered. Please shorten it.")
    raise DoesNotFit(f"Your message{with_system} is over the server's limit of {max_chars} characters. "
                     "Please shorten it.")
