"""Serving core shared by the API server, the web UI and the chat CLI (no web framework imported here).

- `load_replicas` loads one model per device; `describe_model` names it (stage, size) for `/v1/models` and the UI.
- `check_conversation` / `check_sampling` enforce the abuse limits with `RequestError`s (HTTP 400 upstream).
- `stream_rows` turns the engine's per-step token columns into text deltas per sample row.
- `ModelPool` hands generation slots (a replica each) to asyncio callers through a bounded queue.

The one idea: text leaves a row only once its bytes decode as whole UTF-8 characters (an incremental decoder
holds back a split character) and once it can no longer turn into a stop sequence; generation itself runs in
worker threads, so the event loop only ever waits on queues.
"""
from __future__ import annotations

import asyncio
import codecs
import secrets
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import AsyncIterator, Iterator

from nanochat.common import NanochatError

ROLES = ("system", "user", "assistant")


class RequestError(NanochatError):
    """A request the server refuses (HTTP 400): says which parameter and why."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.param = param
        self.code = code


class ServerBusy(NanochatError):
    """The waiting queue is full (HTTP 503)."""


@dataclass
class Limits:
    """Abuse limits (the reference's chat server values) plus a few of our own for OpenAI-only options."""

    max_messages: int = 500
    max_message_chars: int = 8000
    max_total_chars: int = 32000
    max_temperature: float = 2.0
    max_top_k: int = 200
    max_tokens: int = 4096
    max_n: int = 8
    max_stop: int = 4


@dataclass
class SamplingParams:
    temperature: float = 0.8
    top_k: int | None = 50
    top_p: float | None = None
    max_tokens: int = 512
    n: int = 1
    seed: int | None = None  # None = a fresh random seed per request
    stop: tuple[str, ...] = field(default_factory=tuple)


@dataclass
class ModelInfo:
    id: str
    stage: str
    params: int
    n_layer: int
    sequence_len: int
    path: str

    @property
    def size(self) -> str:
        p = self.params
        return f"{p / 1e9:.2f}B" if p >= 1e9 else f"{p / 1e6:.1f}M" if p >= 1e6 else f"{p / 1e3:.0f}K"


# -- models ------------------------------------------------------------------------------------------------
def pick_devices(device: str = "auto", replicas="auto") -> list[str]:
    """One device string per replica: `auto` = every CUDA GPU (one replica each), else the CPU."""
    import torch

    if device in (None, "auto"):
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = str(device)
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise NanochatError(f"device={device} but CUDA is not available; use device=cpu")
    count = torch.cuda.device_count() if device == "cuda" else 1
    n = count if replicas in (None, "auto") else int(replicas)
    if n < 1:
        raise NanochatError(f"replicas must be >= 1 (or auto), got {replicas}")
    if device == "cuda":  # several GPUs: spread replicas round-robin
        return [f"cuda:{i % count}" for i in range(n)]
    return [device] * n


def load_replicas(spec: str | None, devices: list[str]):
    """(engines, tokenizer, ModelInfo): one Engine per device from a model spec (path, latest:<stage>, None)."""
    from nanochat.checkpoint import load_model, resolve_model_path
    from nanochat.engine import Engine

    path = resolve_model_path(spec)
    engines, tokenizer, meta, model = [], None, {}, None
    for dev in devices:
        model, tokenizer, meta = load_model(path, device=dev)
        engines.append(Engine(model, tokenizer))
    return engines, tokenizer, describe_model(model, meta, path)


def describe_model(model, meta: dict, path) -> ModelInfo:
    from pathlib import Path

    path = Path(path)
    stage = str(meta.get("stage") or "unknown")
    folder = path.parent.name if path.name == "model" else path.stem if path.is_file() else path.name
    cfg = model.config
    name = f"nanochat-d{cfg.n_layer}-{stage}" + (f"-{folder}" if folder not in ("", stage, "model") else "")
    return ModelInfo(id=name, stage=stage, params=model.num_params(), n_layer=cfg.n_layer,
                     sequence_len=cfg.sequence_len, path=str(path))


# -- validation --------------------------------------------------------------------------------------------
def _content_text(content, i: int) -> str:
    """A message's text: a string, or OpenAI content parts of type text."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise RequestError(f"messages[{i}].content: only text parts are supported", f"messages.{i}.content")
            parts.append(part["text"])
        return "".join(parts)
    raise RequestError(f"messages[{i}].content must be a string", f"messages.{i}.content")


def check_conversation(messages, limits: Limits) -> dict:
    """OpenAI-style messages -> a conversation dict, or RequestError naming the first problem."""
    if not isinstance(messages, list) or not messages:
        raise RequestError("messages must be a non-empty list", "messages")
    if len(messages) > limits.max_messages:
        raise RequestError(f"too many messages: {len(messages)} > {limits.max_messages}", "messages")
    out, total = [], 0
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict):
            raise RequestError(f"messages[{i}] must be an object", f"messages.{i}")
        role = msg.get("role")
        if role not in ROLES:
            raise RequestError(f"messages[{i}].role {role!r} is not one of {', '.join(ROLES)}", f"messages.{i}.role")
        text = _content_text(msg.get("content"), i)
        if len(text) > limits.max_message_chars:
            raise RequestError(f"messages[{i}] is {len(text)} characters; the limit is {limits.max_message_chars}",
                               f"messages.{i}.content")
        total += len(text)
        out.append({"role": role, "content": text})
    if total > limits.max_total_chars:
        raise RequestError(f"conversation is {total} characters; the limit is {limits.max_total_chars}", "messages")
    if out[-1]["role"] != "user":
        raise RequestError("the last message must come from the user", "messages")
    conv = {"messages": out}
    from nanochat.chat import validate_conversation

    try:
        validate_conversation(conv)
    except NanochatError as e:
        raise RequestError(str(e), "messages") from None
    return conv


def check_sampling(p: SamplingParams, limits: Limits) -> SamplingParams:
    def bad(msg, param):
        raise RequestError(msg, param)

    if not 0.0 <= p.temperature <= limits.max_temperature:
        bad(f"temperature must be between 0 and {limits.max_temperature:g}, got {p.temperature}", "temperature")
    if p.top_k is not None and not 0 <= p.top_k <= limits.max_top_k:
        bad(f"top_k must be between 0 and {limits.max_top_k}, got {p.top_k}", "top_k")
    if p.top_p is not None and not 0.0 < p.top_p <= 1.0:
        bad(f"top_p must be in (0, 1], got {p.top_p}", "top_p")
    if not 1 <= p.max_tokens <= limits.max_tokens:
        bad(f"max_tokens must be between 1 and {limits.max_tokens}, got {p.max_tokens}", "max_tokens")
    if not 1 <= p.n <= limits.max_n:
        bad(f"n must be between 1 and {limits.max_n}, got {p.n}", "n")
    if len(p.stop) > limits.max_stop or any(not s for s in p.stop):
        bad(f"stop takes up to {limits.max_stop} non-empty strings", "stop")
    if p.top_k == 0:
        p.top_k = None  # 0 = no top-k cut, as in most servers
    if p.seed is None:
        p.seed = secrets.randbits(31)
    return p


def render_prompt(tokenizer, conv: dict, context: int, max_tokens: int) -> tuple[list[int], int]:
    """(prompt ids ending in <|assistant_start|>, max new tokens that fit in the model's context).

    The answer is capped at the context the model was trained on (finish_reason "length" when it runs out);
    a prompt that leaves no room at all is a RequestError.
    """
    from nanochat.chat import render_for_completion

    ids = render_for_completion(tokenizer, conv)
    if len(ids) >= context:
        raise RequestError(f"the conversation is {len(ids)} tokens; this model's context is {context}",
                           "messages", "context_length_exceeded")
    return ids, min(max_tokens, context - len(ids))


# -- text streaming ----------------------------------------------------------------------------------------
class TextStream:
    """Token ids -> text for one sample row: whole characters only, cut at the first stop sequence."""

    def __init__(self, tokenizer, stop=()):
        self._bytes = tokenizer.encoding.decode_single_token_bytes
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._stop = tuple(s for s in stop if s)
        self.text = ""      # decoded so far (cut at a stop sequence once one appears)
        self.sent = 0       # characters of `text` already handed out
        self.stopped = False

    def push(self, token_id: int) -> str:
        """Add one token; return the text that is now safe to show (may be empty)."""
        if self.stopped:
            return ""
        self.text += self._decoder.decode(self._bytes(int(token_id)))
        return self._release(final=False)

    def finish(self) -> str:
        """Flush: the rest of the text (an unfinished character becomes U+FFFD)."""
        if not self.stopped:
            self.text += self._decoder.decode(b"", final=True)
        return self._release(final=True)

    def _release(self, final: bool) -> str:
        if self._stop and not self.stopped:
            start = max(0, self.sent - max(map(len, self._stop)) + 1)
            hits = [i for i in (self.text.find(s, start) for s in self._stop) if i >= 0]
            if hits:
                self.text, self.stopped = self.text[: min(hits)], True
        end = len(self.text)
        if self._stop and not (self.stopped or final):
            end -= self._pending_stop_prefix()
        delta, self.sent = self.text[self.sent:end], max(self.sent, end)
        return delta

    def _pending_stop_prefix(self) -> int:
        """Length of the longest tail of the text that could still grow into a stop sequence."""
        best = 0
        for s in self._stop:
            for k in range(min(len(s) - 1, len(self.text)), best, -1):
                if self.text.endswith(s[:k]):
                    best = k
                    break
        return best


@dataclass
class Delta:
    row: int
    text: str
    finish: str | None = None  # "stop" | "length" when the row ends
    tokens: int = 0            # tokens the row has produced so far


def stream_rows(engine, tokenizer, prompt: list[int], p: SamplingParams,
                cancel: threading.Event | None = None) -> Iterator[Delta]:
    """Run the engine and yield text deltas per row; each row ends with exactly one Delta with `finish` set."""
    enders = {tokenizer.encode_special("<|assistant_end|>"), tokenizer.bos_token_id}
    rows = [TextStream(tokenizer, p.stop) for _ in range(p.n)]
    counts = [0] * p.n
    done = [False] * p.n
    gen = engine.generate([prompt], num_samples=p.n, max_tokens=p.max_tokens, temperature=p.temperature,
                          top_k=p.top_k, top_p=p.top_p, seed=p.seed)
    try:
        for tokens, _masks in gen:
            if cancel is not None and cancel.is_set():
                return
            for i, tok in enumerate(tokens[: p.n]):
                if done[i]:
                    continue
                if tok in enders:
                    done[i] = True
                    yield Delta(i, rows[i].finish(), "stop", counts[i])
                    continue
                counts[i] += 1
                text = rows[i].push(tok)
                if rows[i].stopped:
                    done[i] = True
                    yield Delta(i, text, "stop", counts[i])
                elif text:
                    yield Delta(i, text, None, counts[i])
            if all(done):
                break
    finally:
        gen.close()
    for i in range(p.n):
        if not done[i]:
            yield Delta(i, rows[i].finish(), "length", counts[i])


# -- concurrency -------------------------------------------------------------------------------------------
_END = object()


class ModelPool:
    """Generation slots over model replicas; callers beyond the free slots wait in a bounded queue."""

    def __init__(self, engines: list, tokenizer, slots_per_replica: int = 1, max_queue: int = 256):
        if not engines:
            raise NanochatError("no model replicas to serve")
        self.tokenizer = tokenizer
        self.engines = engines
        self.slots = [(i, e) for _ in range(max(1, int(slots_per_replica))) for i, e in enumerate(engines)]
        self.max_queue = max_queue
        self.waiting = 0
        self.active = 0
        self.served = 0
        self._free: asyncio.Queue | None = None
        self._executor = ThreadPoolExecutor(max_workers=len(self.slots), thread_name_prefix="nanochat-gen")

    def _queue(self) -> asyncio.Queue:
        if self._free is None:  # created inside the serving event loop
            self._free = asyncio.Queue()
            for slot in self.slots:
                self._free.put_nowait(slot)
        return self._free

    def stats(self) -> dict:
        return {"replicas": len(self.engines), "slots": len(self.slots), "active": self.active,
                "waiting": self.waiting, "served": self.served}

    async def generate(self, prompt: list[int], p: SamplingParams) -> AsyncIterator[Delta]:
        """Async stream of Deltas; waits for a free slot; frees it once the worker thread has really stopped."""
        free = self._queue()
        if free.empty() and self.waiting >= self.max_queue:
            raise ServerBusy(f"server busy: {self.waiting} requests already waiting")
        self.waiting += 1
        try:
            slot = await free.get()
        finally:
            self.waiting -= 1
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        cancel = threading.Event()
        self.active += 1

        def put(item):
            try:
                loop.call_soon_threadsafe(events.put_nowait, item)
            except RuntimeError:  # the loop is gone (shutdown): nobody is listening any more
                pass

        def work():
            try:
                for delta in stream_rows(slot[1], self.tokenizer, prompt, p, cancel):
                    put(delta)
                put(_END)
            except BaseException as e:  # handed to the caller, never kills the worker
                put(e)
            finally:
                def release():
                    self.active -= 1
                    self.served += 1
                    free.put_nowait(slot)
                try:
                    loop.call_soon_threadsafe(release)
                except RuntimeError:
                    pass

        loop.run_in_executor(self._executor, work)
        try:
            while True:
                item = await events.get()
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            cancel.set()  # client gone or stream finished: the worker stops at its next step

    def close(self):
        self._executor.shutdown(wait=False, cancel_futures=True)
