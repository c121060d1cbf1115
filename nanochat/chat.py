"""Conversations -> token ids + loss mask, the way the model sees them in mid-training, SFT, RL and chat.

A conversation is ``{"messages": [{"role": ..., "content": ...}, ...]}``: an optional system message first, then
user and assistant messages alternating, starting with the user. User and system content is a string; assistant
content is a string or a list of parts ``{"type": "text" | "python" | "python_output", "text": str}``.

The one idea: the mask marks what the model is trained to produce. Everything the assistant writes is
supervised (its text, its tool calls and <|assistant_end|>); what others write is not (BOS, user turns,
<|assistant_start|>, and tool output, which the engine inserts at run time):

    <|bos|> <|user_start|> text <|user_end|> <|assistant_start|> text <|python_start|> code <|python_end|>
    0       0              0    0            0                   1    1               1    1
    <|output_start|> result <|output_end|> text <|assistant_end|>
    0                0      0              1    1

A system message is folded into the first user turn (system text + "\\n\\n" + user text). User text is encoded
as ordinary text, so a literal "<|assistant_start|>" typed by a user never becomes a special token.
"""
from __future__ import annotations

from typing import Any

from nanochat.common import NanochatError

ROLES = ("system", "user", "assistant")
PART_TYPES = ("text", "python", "python_output")


def _messages_of(conversation: Any) -> list:
    if isinstance(conversation, dict):
        if "messages" not in conversation:
            raise NanochatError("conversation has no 'messages' key")
        messages = conversation["messages"]
    else:
        messages = conversation
    if not isinstance(messages, (list, tuple)):
        raise NanochatError(f"conversation messages must be a list, got {type(messages).__name__}")
    return list(messages)


def _check_parts(i: int, parts: list) -> None:
    if not parts:
        raise NanochatError(f"message {i} (assistant): content is an empty list of parts")
    for j, part in enumerate(parts):
        where = f"message {i} (assistant), part {j}"
        if not isinstance(part, dict):
            raise NanochatError(f"{where}: a part must be a dict with 'type' and 'text', got {type(part).__name__}")
        kind = part.get("type")
        if kind not in PART_TYPES:
            raise NanochatError(f"{where}: unknown part type {kind!r}; known: {', '.join(PART_TYPES)}")
        text = part.get("text")
        if not isinstance(text, str):
            raise NanochatError(f"{where}: 'text' must be a string, got {type(text).__name__}")
        if kind == "python" and not text.strip():
            raise NanochatError(f"{where}: empty python code")
        if kind == "python_output" and (j == 0 or parts[j - 1].get("type") != "python"):
            raise NanochatError(f"{where}: a python_output part must come right after a python part")


def validate_conversation(conversation) -> list[dict]:
    """Check the structure; return the messages to render (system folded into the first user message).

    Raises NanochatError naming the first problem (message index and why). The input is not modified.
    Extra keys on the conversation (e.g. "letters", "test") are ignored.
    """
    messages = _messages_of(conversation)
    if not messages:
        raise NanochatError("conversation has no messages")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise NanochatError(f"message {i}: must be a dict with 'role' and 'content'")
        role, content = message["role"], message["content"]
        if role not in ROLES:
            raise NanochatError(f"message {i}: unknown role {role!r}; known: {', '.join(ROLES)}")
        if role == "system" and i != 0:
            raise NanochatError(f"message {i}: a system message may only be the first message")
        if role == "assistant" and isinstance(content, list):
            _check_parts(i, content)
        elif not isinstance(content, str):
            kinds = "a string or a list of parts" if role == "assistant" else "a string"
            raise NanochatError(f"message {i} ({role}): content must be {kinds}, got {type(content).__name__}")
        elif not content.strip():
            raise NanochatError(f"message {i} ({role}): empty content")
    offset = 1 if messages[0]["role"] == "system" else 0
    if offset and len(messages) == 1:
        raise NanochatError("message 0: a system message must be followed by a user message")
    for i in range(offset, len(messages)):
        expected = "user" if (i - offset) % 2 == 0 else "assistant"
        if messages[i]["role"] != expected:
            after = f"after {messages[i - 1]['role']!r}" if i > offset else "first"
            raise NanochatError(
                f"message {i}: expected role {expected!r} {after}, got {messages[i]['role']!r} "
                "(user and assistant must alternate, starting with the user)"
            )
    out = [dict(m) for m in messages[offset:]]
    if offset:
        out[0]["content"] = messages[0]["content"] + "\n\n" + out[0]["content"]
    return out


class _Builder:
    """Accumulates ids and the aligned mask."""

    def __init__(self, tokenizer):
        self.tok = tokenizer
        self.ids: list[int] = []
        self.mask: list[int] = []

    def special(self, name: str, supervised: int) -> None:
        self.ids.append(self.tok.encode_special(name))
        self.mask.append(supervised)

    def text(self, text: str, supervised: int) -> None:
        ids = self.tok.encode(text) if text else []
        self.ids.extend(ids)
        self.mask.extend([supervised] * len(ids))


def _render(tokenizer, messages: list[dict]) -> _Builder:
    b = _Builder(tokenizer)
    b.ids.append(tokenizer.bos_token_id)
    b.mask.append(0)
    for message in messages:
        content = message["content"]
        if message["role"] == "user":
            b.special("<|user_start|>", 0)
            b.text(content, 0)
            b.special("<|user_end|>", 0)
            continue
        b.special("<|assistant_start|>", 0)
        if isinstance(content, str):
            b.text(content, 1)
        else:
            for part in content:
                if part["type"] == "text":
                    b.text(part["text"], 1)
                elif part["type"] == "python":  # the model writes the tool call: supervised
                    b.special("<|python_start|>", 1)
                    b.text(part["text"], 1)
                    b.special("<|python_end|>", 1)
                else:  # tool output comes from the tool at run time: never a training target
                    b.special("<|output_start|>", 0)
                    b.text(part["text"], 0)
                    b.special("<|output_end|>", 0)
        b.special("<|assistant_end|>", 1)
    return b


def render_conversation(tokenizer, conversation, max_tokens: int | None = None) -> tuple[list[int], list[int]]:
    """Token ids and loss mask (1 = supervised) of a whole conversation; cut to max_tokens if given."""
    if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1):
        raise NanochatError(f"max_tokens must be a positive integer or None, got {max_tokens!r}")
    b = _render(tokenizer, validate_conversation(conversation))
    if max_tokens is not None:
        return b.ids[:max_tokens], b.mask[:max_tokens]
    return b.ids, b.mask


def render_for_completion(tokenizer, conversation) -> list[int]:
    """The prompt that asks the model for the next assistant message: ends with <|assistant_start|>.

    The conversation ends with a user message, or with an assistant message, which is dropped (it is the
    reference answer in evaluation and RL).
    """
    messages = validate_conversation(conversation)
    if messages[-1]["role"] == "assistant":
        messages = messages[:-1]
    b = _render(tokenizer, messages)
    b.special("<|assistant_start|>", 0)
    return b.ids
