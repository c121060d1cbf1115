"""Streaming pretraining batches: documents -> BOS-prefixed tokens -> packed rows, with an exact cursor.

Pipeline (one background thread per iteration, bounded prefetch):

1. *Document stream* of one rank, fetched as the reference nanochat does: the split's files in order, and in each
   file rank ``r`` of ``W`` takes the row groups ``r, r+W, r+2W, ...``; epoch after epoch (training cycles
   forever, validation makes one pass unless told otherwise). Every document of the stream has an ordinal
   ``epoch * docs_per_epoch + index``.
2. *Tokenization*: a chunk of one row group at a time (128 documents for ``bestfit``, as the reference refills),
   ``tokenizer.encode(docs, prepend=BOS, num_threads=N)`` (tiktoken batch encoding).
3. *Packing* (`nanochat.packing`): ``bestfit`` (the reference's BOS-aligned best fit, rows of ``T+1`` tokens),
   ``cropfit`` (this project's earlier variant) or ``concat`` (the first release: plain concatenation, rows start
   mid-document). `default_packing(preset)` says which one a reference preset trains with; validation always
   uses ``bestfit`` (see `reference_val_steps` for how many batches).
4. ``inputs``/``targets`` as ``(B, T)`` int64 tensors shifted by one token.

The cursor (``state_dict()``) describes the position *after the last batch handed to the consumer*: the next
document to read (epoch, file index, row group index, document offset; for ``concat`` also a token offset into
it) plus the packing buffer, stored as the ordinals of the buffered documents counted back from the next one
(documents are either wholly in the buffer or consumed, so re-reading and re-tokenizing them rebuilds the buffer
exactly). A loader built with ``cursor=state`` yields exactly the batches the original would have yielded next.
"""
from __future__ import annotations

import bisect
import queue
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterator

import torch

from nanochat.common import NanochatError
from nanochat.dataset import Source
from nanochat.packing import (PACKINGS, REFERENCE_BUFFER_DOCS, REFERENCE_REFILL_DOCS, check_packing,
                              default_packing, make_packer, new_stats, resolve_packing)

__all__ = ["PackingLoader", "val_loader", "val_batches", "target_bytes", "reference_val_steps", "default_packing",
           "resolve_packing", "PACKINGS", "REFERENCE_BUFFER_DOCS"]

CURSOR_VERSION = 2
_END = object()


Encoder = Callable[[list[str]], list[list[int]]]


def _make_encoder(tokenizer: Any, bos_token_id: int | None, threads: int) -> tuple[Encoder, int]:
    """A function texts -> BOS-prefixed token lists, for a nanochat Tokenizer or a raw tiktoken Encoding.

    With several threads the texts are cut into one contiguous slice per thread and encoded by a persistent
    pool (tiktoken releases the GIL while encoding), which costs less than one task per document.
    """
    if hasattr(tokenizer, "encode_ordinary_batch"):  # tiktoken.Encoding
        bos = bos_token_id if bos_token_id is not None else tokenizer.eot_token
        plain = tokenizer.encode_ordinary

        def one(text: str) -> list[int]:
            ids = plain(text)
            ids.insert(0, bos)
            return ids
    else:
        if bos_token_id is None:
            bos_token_id = getattr(tokenizer, "bos_token_id", None)
        if bos_token_id is None:
            raise NanochatError("tokenizer has no BOS token id")
        bos = int(bos_token_id)

        def one(text: str) -> list[int]:
            return tokenizer.encode(text, prepend=bos)

    def encode_slice(texts: list[str]) -> list[list[int]]:
        return [one(t) for t in texts]

    if threads <= 1:
        return encode_slice, bos
    pool: list[ThreadPoolExecutor] = []

    def encode(texts: list[str]) -> list[list[int]]:
        if len(texts) < 2 * threads:
            return encode_slice(texts)
        if not pool:
            pool.append(ThreadPoolExecutor(max_workers=threads, thread_name_prefix="nanochat-tokenize"))
        step = -(-len(texts) // threads)
        parts = pool[0].map(encode_slice, [texts[i: i + step] for i in range(0, len(texts), step)])
        return [ids for part in parts for ids in part]

    return encode, bos


def target_bytes(targets: torch.Tensor, token_bytes: torch.Tensor) -> torch.Tensor:
    """Bytes of text each target token stands for (special tokens 0; negative = ignored targets 0)."""
    token_bytes = token_bytes.to(targets.device)
    valid = targets >= 0
    return torch.where(valid, token_bytes[targets.clamp(min=0)], torch.zeros((), dtype=token_bytes.dtype,
                                                                               device=targets.device))


def reference_val_steps(val_tokens: int, batch_size: int, seq_len: int, world_size: int = 1) -> int:
    """Validation batches per rank as the reference computes them: ``eval_tokens // (B * T * world)``.

    The reference would evaluate nothing below one batch's worth of tokens; here that is at least 1 batch.
    """
    if val_tokens < 0 or batch_size < 1 or seq_len < 1 or world_size < 1:
        raise NanochatError(f"bad validation size: val_tokens={val_tokens}, batch {batch_size} x {seq_len}, "
                            f"world size {world_size}")
    return max(1, int(val_tokens) // (batch_size * seq_len * world_size))


class _Stream:
    """One rank's document stream over a split: ordinals <-> (epoch, shard, row group, offset).

    Rank r of W reads the row groups r, r+W, ... of every file (the reference's striding), so a file with fewer
    row groups than ranks gives some ranks nothing.
    """

    def __init__(self, source: Source, split: str, rank: int, world_size: int):
        flat = source.row_groups(split)
        self.groups = [(s, g, n) for s, g, n in flat if g % world_size == rank and n > 0]
        if not self.groups:
            raise NanochatError(f"{source.name} {split} split has {len(flat)} row groups: too few for rank "
                                f"{rank} of {world_size} (each rank needs at least one)")
        self.prefix = [0]
        for _, _, n in self.groups:
            self.prefix.append(self.prefix[-1] + n)
        self.docs_per_epoch = self.prefix[-1]
        self.index = {(s, g): j for j, (s, g, _) in enumerate(self.groups)}

    def position(self, ordinal: int) -> tuple[int, int, int, int]:
        epoch, o = divmod(ordinal, self.docs_per_epoch)
        j = bisect.bisect_right(self.prefix, o) - 1
        s, g, _ = self.groups[j]
        return epoch, s, g, o - self.prefix[j]

    def ordinal(self, epoch: int, shard: int, group: int, offset: int) -> int:
        j = self.index.get((shard, group))
        if j is None or not 0 <= offset < self.groups[j][2] or epoch < 0:
            raise NanochatError(f"cursor position (file {shard}, row group {group}, document {offset}) does not "
                                "exist in this data")
        return epoch * self.docs_per_epoch + self.prefix[j] + offset


class PackingLoader:
    """Iterable of ``(inputs, targets)`` int64 tensors of shape (batch_size, seq_len); see the module docstring.

    Args:
        source: a `nanochat.dataset.Source`.
        tokenizer: nanochat Tokenizer (or a tiktoken Encoding, then `bos_token_id` or its eot token is BOS).
        batch_size, seq_len: B and T; rows hold T+1 tokens.
        split: "train" or "val".
        rank, world_size: data-parallel position (row-group striding within each file).
        packing: "bestfit" (the reference's), "cropfit" or "concat" (see `nanochat.packing`).
        buffer_docs: documents kept for best-fit packing (the reference keeps 1000).
        tokenizer_threads: threads for batch encoding.
        device: batches are moved there (pinned + non_blocking for CUDA).
        cursor: a `state_dict()` to continue from.
        epochs: passes over the data; None = forever (default for train), 1 for val.
        max_batches: stop each iteration after this many batches.
        prefetch: batches prepared ahead by the background thread.
        read_docs: documents tokenized per chunk (the reference's tokenizer batch, 128); for bestfit it is also
            the refill size, which decides what the buffer holds; other packings give the same batches for any.
    """

    def __init__(self, source: Source, tokenizer: Any, batch_size: int, seq_len: int, split: str = "train",
                 rank: int = 0, world_size: int = 1, buffer_docs: int = REFERENCE_BUFFER_DOCS,
                 tokenizer_threads: int = 4, device: str | torch.device = "cpu", cursor: dict | None = None,
                 epochs: int | None | str = "auto", max_batches: int | None = None, prefetch: int = 4,
                 bos_token_id: int | None = None, read_docs: int = REFERENCE_REFILL_DOCS, packing: str = "bestfit"):
        if batch_size < 1 or seq_len < 1:
            raise NanochatError(f"batch_size and seq_len must be >= 1 (got {batch_size}, {seq_len})")
        if not 0 <= rank < world_size:
            raise NanochatError(f"rank {rank} out of range for world size {world_size}")
        if buffer_docs < 1:
            raise NanochatError("buffer_docs must be >= 1")
        self.packing = check_packing(packing)
        self.source = source
        self.split = split
        self.batch_size = batch_size
        self.seq_len = seq_len
        self.rank = rank
        self.world_size = world_size
        self.buffer_docs = buffer_docs
        self.tokenizer_threads = max(1, tokenizer_threads)
        self.device = torch.device(device)
        self.epochs = (None if split == "train" else 1) if epochs == "auto" else epochs
        self.max_batches = max_batches
        self.prefetch = max(1, prefetch)
        self.read_docs = max(1, read_docs)
        self._encode, self.bos_token_id = _make_encoder(tokenizer, bos_token_id, self.tokenizer_threads)
        self._stream = _Stream(source, split, rank, world_size)
        self.fingerprint = source.fingerprint
        self._state = self._initial_state()
        self._history: deque = deque(maxlen=64)  # (batches, state) of recently yielded batches
        if cursor is not None:
            self.load_state_dict(cursor)

    # -- cursor --------------------------------------------------------------------------------------------------

    def _initial_state(self) -> dict:
        return {"next": 0, "buffer": [], "token_offset": 0, "batches": 0, "stats": new_stats()}

    def _encode_state(self, st: dict) -> dict:
        epoch, shard, group, offset = self._stream.position(st["next"])
        return {
            "version": CURSOR_VERSION,
            "packing": self.packing,
            "fingerprint": self.fingerprint,
            "split": self.split,
            "rank": self.rank,
            "world_size": self.world_size,
            "epoch": epoch,
            "file_index": shard,
            "row_group_index": group,
            "doc_offset": offset,
            "token_offset": st["token_offset"],
            "buffer": [st["next"] - o for o in st["buffer"]],
            "batches": st["batches"],
            "stats": dict(st["stats"]),
        }

    def state_dict(self) -> dict:
        """JSON-able cursor: the position after the last batch yielded to the consumer."""
        return self._encode_state(self._state)

    @property
    def batches_yielded(self) -> int:
        """Total batches yielded, counting those before the cursor this loader started from."""
        return self._state["batches"]

    def state_dict_at(self, batches: int) -> dict:
        """The cursor after the `batches`-th batch (total count), for a consumer that fetches ahead.

        Only the most recent batches are remembered (enough for any prefetching consumer).
        """
        if batches == self._state["batches"]:
            return self.state_dict()
        for n, st in self._history:
            if n == batches:
                return self._encode_state(st)
        raise NanochatError(f"no data cursor for batch {batches} (loader is at batch {self._state['batches']})")

    def load_state_dict(self, state: dict) -> None:
        if not isinstance(state, dict) or state.get("version") != CURSOR_VERSION:
            raise NanochatError("not a data loader cursor (or from an incompatible version)")
        for key, mine in (("fingerprint", self.fingerprint), ("split", self.split),
                          ("world_size", self.world_size), ("rank", self.rank), ("packing", self.packing)):
            if state.get(key) != mine:
                raise NanochatError(f"data cursor mismatch: {key} is {state.get(key)!r} in the cursor but {mine!r} "
                                    "here (different dataset, split, world size or packing)")
        nxt = self._stream.ordinal(int(state["epoch"]), int(state["file_index"]), int(state["row_group_index"]),
                                   int(state["doc_offset"]))
        buf = [nxt - int(d) for d in state.get("buffer", [])]
        if any(o < 0 or o >= nxt for o in buf) or buf != sorted(set(buf)):
            raise NanochatError("corrupt data cursor: bad buffer")
        token_offset = int(state.get("token_offset", 0))
        if token_offset < 0 or (token_offset and self.packing != "concat"):
            raise NanochatError("corrupt data cursor: bad token offset")
        stats = new_stats()
        stats.update({k: int(v) for k, v in state.get("stats", {}).items() if k in stats})
        self._state = {"next": nxt, "buffer": buf, "token_offset": token_offset,
                       "batches": int(state.get("batches", 0)), "stats": stats}
        self._history.clear()

    def reset(self) -> None:
        self._state = self._initial_state()
        self._history.clear()

    @property
    def stats(self) -> dict:
        """Counters up to the last yielded batch (carried in the cursor across resumes).

        See `nanochat.packing.new_stats`; tokens counts B*(T+1) per batch (B*T+1 for concat);
        cropped_fraction = cropped / (tokens + cropped).
        """
        st = dict(self._state["stats"])
        total = st["tokens"] + st["cropped"]
        st["cropped_fraction"] = st["cropped"] / total if total else 0.0
        st["batches"] = self._state["batches"]
        st["epoch"] = self._stream.position(self._state["next"])[0]
        return st

    # -- iteration -----------------------------------------------------------------------------------------------

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        q: queue.Queue = queue.Queue(maxsize=self.prefetch)
        stop = threading.Event()
        start = {"next": self._state["next"], "buffer": list(self._state["buffer"]),
                 "token_offset": self._state["token_offset"], "batches": self._state["batches"],
                 "stats": dict(self._state["stats"])}
        worker = threading.Thread(target=self._produce, args=(start, q, stop), daemon=True,
                                  name="nanochat-packing")
        worker.start()
        cuda = self.device.type == "cuda"
        yielded = 0
        try:
            while self.max_batches is None or yielded < self.max_batches:
                item = q.get()
                if isinstance(item, tuple) and item[0] is _END:  # finite pass over: keep the final counts
                    self._state = {**self._state, "stats": item[1]}
                    return
                if isinstance(item, BaseException):
                    raise item
                inputs, targets, state = item
                if cuda:
                    inputs = inputs.to(self.device, non_blocking=True)
                    targets = targets.to(self.device, non_blocking=True)
                elif self.device.type != "cpu":
                    inputs, targets = inputs.to(self.device), targets.to(self.device)
                self._history.append((self._state["batches"], self._state))
                self._state = state
                yielded += 1
                yield inputs, targets
        finally:
            stop.set()
            while worker.is_alive():
                try:  # unblock a producer waiting on a full queue
                    q.get_nowait()
                except queue.Empty:
                    pass
                worker.join(timeout=0.05)

    def _put(self, q: queue.Queue, item: Any, stop: threading.Event) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _produce(self, st: dict, q: queue.Queue, stop: threading.Event) -> None:
        try:
            for item in self._batches(st, stop):
                if not self._put(q, item, stop):
                    return
            self._put(q, (_END, dict(st["stats"])), stop)
        except BaseException as e:  # noqa: BLE001 - handed to the consumer
            self._put(q, e, stop)

    def _chunks(self, start: int, stop: threading.Event) -> Iterator[tuple[int, list[list[int]]]]:
        """(first ordinal, token lists) of the stream from `start`: up to `read_docs` documents of one row group
        at a time, cut at multiples of `read_docs` within the group (up to the epoch limit)."""
        end = None if self.epochs is None else self.epochs * self._stream.docs_per_epoch
        o = start
        cached: tuple[int, int, list[str]] | None = None  # (shard, group, docs) of the last row group read
        while (end is None or o < end) and not stop.is_set():
            epoch, shard, group, offset = self._stream.position(o)
            if cached is None or cached[:2] != (shard, group):
                cached = (shard, group, self.source.read_row_group(self.split, shard, group))
            docs = cached[2]
            take = docs[offset: (offset // self.read_docs + 1) * self.read_docs]
            if end is not None:
                take = take[: end - o]
            if not take:
                raise NanochatError(f"row group {group} of file {shard} has fewer documents than its metadata says")
            yield o, self._encode(take)
            o += len(take)

    def _rebuild(self, ordinals: list[int]) -> list[list[int]]:
        """Tokens of the given (sorted) document ordinals, read back from the source."""
        out: list[list[int]] = []
        i = 0
        while i < len(ordinals):
            where = self._stream.position(ordinals[i])[:3]
            docs = self.source.read_row_group(self.split, where[1], where[2])
            texts = []
            while i < len(ordinals):
                epoch, shard, group, offset = self._stream.position(ordinals[i])
                if (epoch, shard, group) != where:
                    break
                texts.append(docs[offset])
                i += 1
            out.extend(self._encode(texts))
        return out

    def _batches(self, st: dict, stop: threading.Event) -> Iterator[tuple[torch.Tensor, torch.Tensor, dict]]:
        B, T = self.batch_size, self.seq_len
        stats = st["stats"]
        buffered = list(zip(st["buffer"], self._rebuild(st["buffer"])))
        packer = make_packer(self.packing, B, T, stats, self._chunks(st["next"], stop), st["next"], buffered,
                             token_offset=st["token_offset"], buffer_docs=self.buffer_docs)
        batches = st["batches"]
        pin = self.device.type == "cuda"
        while not stop.is_set():
            flat = packer.next_batch()
            if flat is None:  # finite stream over
                return
            batches += 1
            t = torch.tensor(flat, dtype=torch.long)
            if self.packing == "concat":  # one window of B*T+1 tokens
                inputs, targets = t[:-1].view(B, T), t[1:].view(B, T)
            else:
                rows = t.view(B, T + 1)
                inputs, targets = rows[:, :-1].contiguous(), rows[:, 1:].contiguous()
            if pin:
                inputs, targets = inputs.pin_memory(), targets.pin_memory()
            yield inputs, targets, {**packer.state(), "batches": batches, "stats": dict(stats)}


def val_loader(source: Source, tokenizer: Any, batch_size: int, seq_len: int, steps: int | None = None,
               rank: int = 0, world_size: int = 1, **kwargs: Any) -> PackingLoader:
    """Validation batches from the start of the val split: one pass, or exactly `steps` batches (cycling, as the
    reference's endless val loader does). Best-fit packing with the reference's buffer unless told otherwise."""
    kwargs.setdefault("packing", "bestfit")
    return PackingLoader(source, tokenizer, batch_size, seq_len, split="val", rank=rank, world_size=world_size,
                         epochs=None if steps is not None else 1, max_batches=steps, **kwargs)


def val_batches(*args: Any, **kwargs: Any) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    return iter(val_loader(*args, **kwargs))
