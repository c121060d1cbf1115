"""Continuous batching: one decode loop per model replica that runs the rows of every active request together.

The one idea: all rows share one KV cache and one write position, as in a left-padded engine batch. A new
request is prefilled on its own, then its keys and values are copied into free rows so that they end right
at the shared position (its left padding is whatever lies before); from the next step on it decodes with the
others, one token per row per step. Requests join and leave only between steps; a leaving request's rows are
packed away (rows after it move down, so each request keeps a contiguous block), and when the shared
position reaches the end of the cache, or no active row needs the oldest half of it, every row shifts left
by the padding all of them share. Each request samples with its own seeded generator over its own rows, with
the same calls as `Engine.generate`, so greedy text (and, within float noise, seeded samples) are what the
engine alone would give.

Threads: the loop runs in its own daemon thread; `submit` and `Job.cancel` may be called from any thread
(the asyncio pool in `nanochat.serving` calls them from the event loop). A cancelled job leaves at the next
step and emits nothing more.
"""
from __future__ import annotations

import asyncio
import threading
import weakref
from collections import deque
from typing import AsyncIterator, Callable

import torch
import torch.nn.functional as F

from nanochat.common import NanochatError
from nanochat.engine import KVCache, _Row, draw, sampling_probs


class Job:
    """One request: its n rows, their engine state (tool calls, stop) and sampling generator."""

    def __init__(self, prompt: list[int], p, emit: Callable):
        self.prompt, self.p, self.emit = list(prompt), p, emit
        self.logprobs = p.logprobs  # top-k log-probabilities wanted (None = off)
        self.rows = [_Row() for _ in range(p.n)]
        self.steps = 0
        self.start = 0           # index of its first row in the batch
        self.cancelled = False   # set from another thread; read once per step
        self.rng: torch.Generator | None = None

    def cancel(self) -> None:
        self.cancelled = True


class _BatchCache(KVCache):
    """A KVCache over the first `n` rows of the batcher's storage (views, so the model writes into it)."""

    def __init__(self, k, v, pos, pad, prev, fused):
        self.k, self.v, self.max_len, self.pos = k, v, k.size(3), pos
        self.prev_embedding, self._fused = prev, fused
        self._set_pad(pad, k.device)


class Batcher:
    """The decode loop of one replica: at most `max_rows` rows at once (a bigger request runs alone).

    `submit(prompt, p, emit)` queues a request and returns its Job; `emit(kind, payload)` is then called from
    the loop thread with ("tokens", (token ids, masks, log-probabilities or None)) once per step (a true
    answer ends the job: its reader has all it wants), then ("end", None); or once with ("error", exc).
    """

    def __init__(self, engine, max_rows: int):
        self.engine, self.model = engine, engine.model
        self.max_rows = max(1, int(max_rows))
        cfg = self.model.config
        self.max_len = cfg.sequence_len  # a row never outgrows the context (render_prompt caps answers)
        self.device = self.model.transformer.wte.weight.device
        special = engine.special
        self.bos = special.get("bos")
        self.stops = {special[n] for n in ("assistant_end", "bos") if n in special}
        self.tools = "python_start" in special
        self.pending: deque[Job] = deque()
        self.jobs: list[Job] = []
        self.cond = threading.Condition()
        self.closed = False
        self._k = self._v = None
        self._fused: dict = {}
        self.cache: _BatchCache | None = None
        self.pad: list[int] = []
        self.thread = threading.Thread(target=self._run, name="nanochat-batcher", daemon=True)
        self.thread.start()

    # -- called from other threads ----------------------------------------------------------------------
    def submit(self, prompt: list[int], p, emit: Callable) -> Job:
        if len(prompt) >= self.max_len:
            raise NanochatError(f"the prompt is {len(prompt)} tokens; this model's context is {self.max_len}")
        job = Job(prompt, p, emit)
        with self.cond:
            self.pending.append(job)
            self.cond.notify()
        return job

    @property
    def rows(self) -> int:
        return sum(j.p.n for j in self.jobs)

    def load(self) -> int:
        """Rows active or waiting (for picking the least loaded replica)."""
        return self.rows + sum(j.p.n for j in list(self.pending))

    def close(self) -> None:
        with self.cond:
            self.closed = True
            self.cond.notify()

    # -- the loop -------------------------------------------------------------------------------------------
    def _run(self) -> None:
        logits = None
        while True:
            with self.cond:
                while not self.closed and not self.pending and not self.jobs:
                    self.cond.wait()
                if self.closed:
                    return
            try:
                with torch.inference_mode():
                    logits = self._step(logits)
            except Exception as e:  # a failing step ends every request in it, never the loop
                for job in self.jobs:
                    job.emit("error", e)
                self.jobs, logits, self.cache, self.pad = [], None, None, []

    def _take_pending(self) -> list[Job]:
        """Pending jobs that fit now (first come, first served; a job bigger than max_rows waits for an empty
        batch); cancelled ones are dropped."""
        taken, free = [], self.max_rows - self.rows
        with self.cond:
            while self.pending:
                job = self.pending[0]
                if job.cancelled:
                    self.pending.popleft()
                    continue
                if job.p.n > free and (self.jobs or taken):
                    break
                taken.append(self.pending.popleft())
                free -= job.p.n
        return taken

    def _step(self, logits):
        """Admit, sample one token per row, retire finished jobs, decode one position; the next logits."""
        gone = [j for j in self.jobs if j.cancelled]
        if gone:
            logits = self._retire(gone, logits)
        for job in self._take_pending():
            try:
                logits = self._join(job, logits)
            except Exception as e:  # its prefill failed (joined nothing): only this request ends
                job.emit("error", e)
        if not self.jobs:
            return None
        if self.bos is not None:
            logits[:, self.bos] = float("-inf")
        greedy = logits.argmax(dim=-1).tolist() if any(j.p.temperature == 0 for j in self.jobs) else None
        probs = {}  # one top-k/top-p/softmax per sampling setting for all its rows; each job draws its own
        for setting in {(float(j.p.temperature), j.p.top_k, j.p.top_p) for j in self.jobs if j.p.temperature}:
            probs[setting] = sampling_probs(logits, *setting)
        feed, finished = [], []
        for job in self.jobs:
            lo, hi = job.start, job.start + job.p.n
            if job.p.temperature == 0:
                sampled = greedy[lo:hi]
            else:
                pr, index = probs[(float(job.p.temperature), job.p.top_k, job.p.top_p)]
                sampled = draw(pr[lo:hi], None if index is None else index[lo:hi], job.rng).tolist()
            tokens, masks = self._advance(job, sampled)
            feed.extend(tokens)
            job.steps += 1
            lps = None
            if job.logprobs is not None:  # as Engine.generate: the model's distribution, before temperature
                from nanochat.engine import _logprob_rows

                lps = _logprob_rows(F.log_softmax(logits[lo:hi].float(), dim=-1), tokens, int(job.logprobs))
            enough = job.emit("tokens", (tokens, masks, lps))
            if enough or job.steps >= job.max_tokens or all(r.done for r in job.rows):
                finished.append(job)
        if finished:
            keep = [i for j in self.jobs if j not in finished for i in range(j.start, j.start + j.p.n)]
            feed = [feed[i] for i in keep]
            logits = self._retire(finished, logits)
            for job in finished:
                job.emit("end", None)
        if not self.jobs:
            return None
        self._make_room()
        step_input = torch.tensor(feed, dtype=torch.long, device=self.device).view(-1, 1)
        return self.model(step_input, kv_cache=self.cache)[:, -1, :]

    def _advance(self, job: Job, sampled: list[int]):
        """Engine.generate's per-row rules (finished rows repeat their stop token, forced tool tokens first)."""
        return self.engine.advance_rows(job.rows, sampled, self.stops, self.tools)

    # -- cache bookkeeping ----------------------------------------------------------------------------------
    def _storage(self, rows: int) -> None:
        """(Re)allocate the shared cache for at least `rows` rows (only while the batch is empty)."""
        if self._k is not None and self._k.size(1) >= rows:
            return
        probe = KVCache.for_model(self.model, 1, 1)
        shape = (probe.k.size(0), max(rows, self.max_rows), probe.k.size(2), self.max_len, probe.k.size(4))
        self._k = torch.zeros(shape, dtype=probe.k.dtype, device=self.device)
        self._v = torch.zeros_like(self._k)

    def _rebuild(self, pos: int, pad: list[int], prev) -> None:
        n = len(pad)
        self.cache = _BatchCache(self._k[:, :n], self._v[:, :n], pos, pad, prev, self._fused)
        self.pad = pad

    def _join(self, job: Job, logits):
        """Prefill the job's prompt once and lay it into n new rows that end at the shared position."""
        p, L = job.p, len(job.prompt)
        job.max_tokens = max(1, min(p.max_tokens, self.max_len - L))
        job.rng = torch.Generator(device=self.device)
        job.rng.manual_seed(int(p.seed) if p.seed is not None else 0)
        if not self.jobs:
            self._storage(p.n)
            self.cache, self.pad, logits = None, [], None
        part = KVCache.for_model(self.model, 1, L, dtype=self._k.dtype)
        part._fused = self._fused
        out = self.model(torch.tensor([job.prompt], dtype=torch.long, device=self.device), kv_cache=part)[:, -1, :]
        n_old = len(self.pad)
        pos = self.cache.pos if self.cache is not None else L
        pad = list(self.pad)
        if L > pos:  # a prompt longer than the batch so far: every old row moves right to make room
            shift = L - pos
            if n_old:
                self._k[:, :n_old, :, shift:L] = self._k[:, :n_old, :, :pos].clone()
                self._v[:, :n_old, :, shift:L] = self._v[:, :n_old, :, :pos].clone()
            pad, pos = [x + shift for x in pad], L
        rows = slice(n_old, n_old + p.n)
        self._k[:, rows, :, pos - L:pos] = part.k
        self._v[:, rows, :, pos - L:pos] = part.v
        prev = self.cache.prev_embedding if self.cache is not None else None
        if part.prev_embedding is not None:  # smear: each row carries its own prompt's last embedding
            new = part.prev_embedding.expand(p.n, -1, -1)
            prev = new.clone() if prev is None else torch.cat([prev, new])
        job.start = n_old
        self.jobs.append(job)
        self._rebuild(pos, pad + [pos - L] * p.n, prev)
        new_logits = out.expand(p.n, -1)
        return new_logits.clone() if logits is None else torch.cat([logits, new_logits])

    def _retire(self, leaving: list[Job], logits):
        """Drop the jobs' rows; rows after them move down so that the live rows stay packed from row 0."""
        keep = [i for j in self.jobs if j not in leaving for i in range(j.start, j.start + j.p.n)]
        self.jobs = [j for j in self.jobs if j not in leaving]
        if not self.jobs:
            self.cache, self.pad = None, []
            return None
        start = 0
        for j in self.jobs:
            j.start, start = start, start + j.p.n
        pos = self.cache.pos
        moved = [(dst, src) for dst, src in enumerate(keep) if dst != src]
        if moved:
            dst = torch.tensor([d for d, _ in moved], device=self.device)
            src = torch.tensor([s for _, s in moved], device=self.device)
            self._k[:, dst, :, :pos] = self._k[:, src, :, :pos]  # gathered first: overlapping moves are safe
            self._v[:, dst, :, :pos] = self._v[:, src, :, :pos]
        index = torch.tensor(keep, device=self.device)
        prev = self.cache.prev_embedding
        self._rebuild(pos, [self.pad[i] for i in keep], None if prev is None else prev[index])
        return None if logits is None else logits[index]

    def _make_room(self) -> None:
        """Shift every row left by their common padding when the cache is full or mostly padding."""
        pos, shift = self.cache.pos, min(self.pad)
        if shift == 0 or (pos < self.max_len and 2 * shift < pos):
            return
        n = len(self.pad)
        self._k[:, :n, :, : pos - shift] = self._k[:, :n, :, shift:pos].clone()
        self._v[:, :n, :, : pos - shift] = self._v[:, :n, :, shift:pos].clone()
        self._rebuild(pos - shift, [x - shift for x in self.pad], self.cache.prev_embedding)


class _Relay:
    """Hands items from decode-loop threads to an event loop's queues with one wake-up of the loop per batch
    of items (a step of 32 requests is one wake-up, not 32)."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop, self.items, self.lock, self.scheduled = loop, [], threading.Lock(), False

    def put(self, queue: asyncio.Queue, item) -> None:
        with self.lock:
            self.items.append((queue, item))
            if self.scheduled:
                return
            self.scheduled = True
        try:
            self.loop.call_soon_threadsafe(self._drain)
        except RuntimeError:  # the loop is gone (shutdown): nobody is listening any more
            pass

    def _drain(self) -> None:
        with self.lock:
            items, self.items, self.scheduled = self.items, [], False
        for queue, item in items:
            queue.put_nowait(item)


_relays: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


async def stream_job(batcher: Batcher, tokenizer, prompt: list[int], p) -> AsyncIterator:
    """Async Deltas of one request run by `batcher`; leaving early (client gone) cancels it within a step."""
    from nanochat.serving import RowDecoder

    loop = asyncio.get_running_loop()
    relay = _relays.get(loop) or _relays.setdefault(loop, _Relay(loop))
    events: asyncio.Queue = asyncio.Queue()
    decoders = [RowDecoder(tokenizer, i, p.stop) for i in range(p.n)]
    end = object()

    def put(item):
        relay.put(events, item)

    def emit(kind, payload):  # runs in the batcher thread: text is decoded there, the event loop only relays
        if kind == "tokens":
            tokens, _masks, lps = payload
            out = []
            for i, d in enumerate(decoders):
                out += d.push(tokens[i], None if lps is None else lps[i])
            if out:
                put(out)
            return all(d.done for d in decoders)
        if kind == "end":
            put([x for d in decoders for x in d.finish()] + [end])
        else:
            put(payload)
        return True

    job = batcher.submit(prompt, p, emit)
    try:
        while True:
            item = await events.get()
            if isinstance(item, BaseException):
                raise item
            for delta in item:
                if delta is end:
                    return
                yield delta
    finally:
        job.cancel()  # finished, failed or abandoned: the loop drops its rows before the next step
