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
    max_stop_chars: int = 64   # characters per stop string (each is searched for on every step)
    max_body_bytes: int = 1_000_000  # HTTP request body; larger is a 413 before it is read
    max_logprobs: int = 20     # top_logprobs, as OpenAI


@dataclass
class SamplingParams:
    temperature: float = 0.8
    top_k: int | None = 50
    top_p: float | None = None
    max_tokens: int = 512
    n: int = 1
    seed: int | None = None  # None = a fresh random seed per request
    stop: tuple[str, ...] = field(default_factory=tuple)
    logprobs: int | None = None  # None = off; k = each token's log-probability and its k likeliest alternatives


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
def _content_text(content, i: int, role: str) -> str | list[dict]:
    """A message's text: a string, or OpenAI content parts of type text. An assistant message may also carry
    tool-use parts (python, python_output) as the server returns them: then the parts, to render exactly."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        kinds = ("text", "python", "python_output") if role == "assistant" else ("text",)
        parts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") not in kinds or not isinstance(part.get("text"), str):
                raise RequestError(f"messages[{i}].content: only {', '.join(kinds)} parts are supported",
                                   f"messages.{i}.content")
            parts.append({"type": part["type"], "text": part["text"]})
        if all(part["type"] == "text" for part in parts):
            return "".join(part["text"] for part in parts)
        return parts
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
        text = _content_text(msg.get("content"), i, role)
        size = len(text) if isinstance(text, str) else sum(len(part["text"]) for part in text)
        if size > limits.max_message_chars:
            raise RequestError(f"messages[{i}] is {size} characters; the limit is {limits.max_message_chars}",
                               f"messages.{i}.content")
        total += size
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
    if any(len(s) > limits.max_stop_chars for s in p.stop):
        bad(f"each stop string may have up to {limits.max_stop_chars} characters", "stop")
    if p.seed is not None and not -(2**63) <= p.seed < 2**64:  # what torch.Generator.manual_seed takes
        bad(f"seed must be a 64-bit integer, got {p.seed}", "seed")
    if p.logprobs is not None and not 0 <= p.logprobs <= limits.max_logprobs:
        bad(f"top_logprobs must be between 0 and {limits.max_logprobs}, got {p.logprobs}", "top_logprobs")
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
    kind: str = "text"         # the part the text belongs to: text | python (calculator code) | python_output
    logprobs: list | None = None  # with p.logprobs: (token id, log-probability, [(id, lp)] top) per new token

# tool-use special tokens -> the part the text after them belongs to (chat.py's assistant content parts)
_PART_AFTER = {"<|python_start|>": "python", "<|python_end|>": "text", "<|output_start|>": "python_output",
               "<|output_end|>": "text"}


class RowDecoder:
    """Token ids -> Deltas for one sample row: text split into tool-use parts, stop strings (in text parts),
    and each token's log-probabilities handed out with the next delta."""

    def __init__(self, tokenizer, row: int, stop=()):
        self.row, self.stop_strings, self.tokenizer = row, stop, tokenizer
        self.enders = {tokenizer.encode_special("<|assistant_end|>"), tokenizer.bos_token_id}
        self.switch = {tokenizer.encode_special(name): kind for name, kind in _PART_AFTER.items()}
        self.kind, self.stream = "text", TextStream(tokenizer, stop)
        self.count, self.done, self.pending = 0, False, []

    def _delta(self, text, finish=None) -> Delta:
        logprobs, self.pending = self.pending, []
        return Delta(self.row, text, finish, self.count, self.kind, logprobs)

    def push(self, token: int, logprob=None) -> list[Delta]:
        if self.done:
            return []
        if token in self.enders:
            self.done = True
            return [self._delta(self.stream.finish(), "stop")]
        self.count += 1
        if logprob is not None:
            self.pending.append((token, logprob[0], logprob[1]))
        if token in self.switch:  # close the current part, open the next
            out = [self._delta(self.stream.finish())]
            self.kind = self.switch[token]
            self.stream = TextStream(self.tokenizer, self.stop_strings if self.kind == "text" else ())
            return out
        text = self.stream.push(token)
        if self.stream.stopped:
            self.done = True
            return [self._delta(text, "stop")]
        return [self._delta(text)] if text else []

    def finish(self) -> list[Delta]:
        """The row ran out of tokens: its last delta (finish "length"), unless it already ended."""
        if self.done:
            return []
        self.done = True
        return [self._delta(self.stream.finish(), "length")]


def stream_rows(engine, tokenizer, prompt: list[int], p: SamplingParams,
                cancel: threading.Event | None = None) -> Iterator[Delta]:
    """Run the engine and yield deltas per row; each row ends with exactly one Delta with `finish` set."""
    rows = [RowDecoder(tokenizer, i, p.stop) for i in range(p.n)]
    kw = {} if p.logprobs is None else {"logprobs": p.logprobs}
    gen = engine.generate([prompt], num_samples=p.n, max_tokens=p.max_tokens, temperature=p.temperature,
                          top_k=p.top_k, top_p=p.top_p, seed=p.seed, **kw)
    try:
        for step in gen:
            if cancel is not None and cancel.is_set():
                return
            tokens, lps = step[0], (step[2] if len(step) > 2 else None)
            for i, tok in enumerate(tokens[: p.n]):
                yield from rows[i].push(tok, None if lps is None else lps[i])
            if all(r.done for r in rows):
                break
    finally:
        gen.close()
    for r in rows:
        yield from r.finish()


# -- concurrency -------------------------------------------------------------------------------------------
_END = object()


class ClientGone(Exception):
    """The HTTP client hung up before its answer was complete."""


async def unless_gone(receive, aw):
    """Await `aw` (e.g. the next Delta), unless the ASGI `receive` reports the client's disconnect first:
    then `aw` is cancelled (a generation waiting on it stops at its next step) and ClientGone is raised.

    A request whose body has been read gets nothing more from `receive` but http.disconnect, so waiting on it
    costs nothing; without this a non-streaming answer would be generated to the end for nobody."""
    task = asyncio.ensure_future(aw)
    gone = asyncio.ensure_future(_disconnected(receive))
    try:
        await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
        if not task.done() and (gone.cancelled() or gone.exception() is not None):
            await asyncio.wait({task})  # `receive` itself failed: no way to tell, so just wait
    except BaseException:
        task.cancel()
        raise
    finally:
        gone.cancel()
    if not task.done():
        task.cancel()
        try:
            await task  # let the generator run its cleanup before anyone closes it
        except (asyncio.CancelledError, Exception):
            pass
        raise ClientGone("the client closed the connection")
    return task.result()


async def _disconnected(receive) -> None:
    while (await receive()).get("type") != "http.disconnect":
        pass


class ModelPool:
    """Generation over model replicas; callers beyond the capacity wait in a bounded queue.

    batching=True (the default, for `nanochat.engine.Engine` replicas): one `nanochat.batcher.Batcher` decode
    loop per replica runs every active request's rows together, at most `slots_per_replica` rows at once.
    batching=False (and engine stand-ins without a model): `slots_per_replica` slots per replica, each a
    worker thread running one request alone.
    """

    def __init__(self, engines: list, tokenizer, slots_per_replica: int = 1, max_queue: int = 256,
                 batching: bool = True):
        if not engines:
            raise NanochatError("no model replicas to serve")
        from nanochat.engine import Engine

        self.tokenizer = tokenizer
        self.engines = engines
        self.slots = [(i, e) for _ in range(max(1, int(slots_per_replica))) for i, e in enumerate(engines)]
        self.max_queue = max_queue
        self.waiting = 0
        self.active = 0
        self.served = 0
        self._free: asyncio.Queue | None = None
        self.batchers = []
        if batching and all(isinstance(e, Engine) for e in engines):
            from nanochat.batcher import Batcher

            self.batchers = [Batcher(e, slots_per_replica) for e in engines]
        self._executor = ThreadPoolExecutor(max_workers=len(self.slots), thread_name_prefix="nanochat-gen")

    def _queue(self) -> asyncio.Queue:
        if self._free is None:  # created inside the serving event loop
            self._free = asyncio.Queue()
            for slot in self.slots:
                self._free.put_nowait(slot)
        return self._free

    def stats(self) -> dict:
        if self.batchers:  # "slots" = rows decoded together; "waiting" = requests not yet admitted
            return {"replicas": len(self.engines), "slots": len(self.slots),
                    "active": sum(len(b.jobs) for b in self.batchers),
                    "waiting": sum(len(b.pending) for b in self.batchers), "served": self.served, "batching": True}
        return {"replicas": len(self.engines), "slots": len(self.slots), "active": self.active,
                "waiting": self.waiting, "served": self.served, "batching": False}

    async def generate(self, prompt: list[int], p: SamplingParams) -> AsyncIterator[Delta]:
        """Async stream of Deltas. Leaving the stream early (aclose, cancellation: the client went away)
        stops the request's generation within a step and frees its rows or slot."""
        if self.batchers:
            from nanochat.batcher import Batcher, stream_job

            if sum(len(b.pending) for b in self.batchers) >= self.max_queue:
                raise ServerBusy(f"server busy: {self.max_queue} requests already waiting")
            self.active += 1
            try:
                async for delta in stream_job(min(self.batchers, key=Batcher.load), self.tokenizer, prompt, p):
                    yield delta
            finally:
                self.active -= 1
                self.served += 1
            return
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
        for b in self.batchers:
            b.close()
        self._executor.shutdown(wait=False, cancel_futures=True)
