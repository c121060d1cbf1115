"""Streaming pretraining batches: documents -> BOS-prefixed tokens -> best-fit packed rows, with an exact cursor.

Pipeline (one background thread per iteration, bounded prefetch):

1. *Document stream* of one rank: the split's row groups in order (shard by shard), rank ``r`` of ``W`` taking the
   row groups ``r, r+W, r+2W, ...`` of the flat list; epoch after epoch (training cycles forever, validation
   makes one pass unless told otherwise). Every document of the stream has an ordinal
   ``epoch * docs_per_epoch + index``.
2. *Tokenization*: a row group at a time, ``tokenizer.encode(docs, prepend=BOS, num_threads=N)`` (tiktoken batch
   encoding), so every document starts with ``<|bos|>``.
3. *Packing* rows of ``T+1`` tokens from a buffer of up to ``buffer_docs`` documents (refilled at the start of
   every row, and inside a row if it runs dry): repeatedly place the *largest* buffered document that fits the
   space left in the row; when none fits, the *shortest* buffered document fills the rest of the row and its
   tail is dropped (counted as cropped). A document longer than a whole row is cropped to ``T+1`` tokens when
   it enters the buffer (its tail is counted as cropped; it then fills a row by itself). So every row starts with BOS, no token is lost except
   the counted crops, and the output is a deterministic function of the data.
4. ``inputs = row[:-1]``, ``targets = row[1:]`` as ``(B, T)`` int64 tensors.

The cursor (``state_dict()``) describes the position *after the last batch handed to the consumer*: the next
document to read (epoch, file index, row group index, document offset) plus the packing buffer, stored as the
ordinals of the buffered documents counted back from the next one (documents are either wholly in the buffer or
consumed, so re-reading and re-tokenizing them rebuilds the buffer exactly). A loader built with
``cursor=state`` yields exactly the batches the original would have yielded next.
"""
from __future__ import annotations

import bisect
import queue
import threading
from collections import OrderedDict, deque
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterator

import torch

from nanochat.common import NanochatError
from nanochat.dataset import Source

CURSOR_VERSION = 1
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


class _Stream:
    """One rank's document stream over a split: ordinals <-> (epoch, shard, row group, offset)."""

    def __init__(self, source: Source, split: str, rank: int, world_size: int):
        flat = source.row_groups(split)
        self.groups = [g for k, g in enumerate(flat) if k % world_size == rank and g[2] > 0]
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
        rank, world_size: data-parallel position (row-group striding).
        buffer_docs: documents kept for best-fit packing.
        tokenizer_threads: threads for batch encoding.
        device: batches are moved there (pinned + non_blocking for CUDA).
        cursor: a `state_dict()` to continue from.
        epochs: passes over the data; None = forever (default for train), 1 for val.
        max_batches: stop each iteration after this many batches.
        prefetch: batches prepared ahead by the background thread.
    """

    def __init__(self, source: Source, tokenizer: Any, batch_size: int, seq_len: int, split: str = "train",
                 rank: int = 0, world_size: int = 1, buffer_docs: int = 1000, tokenizer_threads: int = 4,
                 device: str | torch.device = "cpu", cursor: dict | None = None, epochs: int | None | str = "auto",
                 max_batches: int | None = None, prefetch: int = 4, bos_token_id: int | None = None,
                 read_docs: int = 1024):
        if batch_size < 1 or seq_len < 1:
            raise NanochatError(f"batch_size and seq_len must be >= 1 (got {batch_size}, {seq_len})")
        if not 0 <= rank < world_size:
            raise NanochatError(f"rank {rank} out of range for world size {world_size}")
        if buffer_docs < 1:
            raise NanochatError("buffer_docs must be >= 1")
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
        return {"next": 0, "buffer": [], "batches": 0,
                "stats": {"docs_read": 0, "docs": 0, "tokens": 0, "cropped": 0, "dropped": 0}}

    def _encode_state(self, st: dict) -> dict:
        epoch, shard, group, offset = self._stream.position(st["next"])
        return {
            "version": CURSOR_VERSION,
            "fingerprint": self.fingerprint,
            "split": self.split,
            "rank": self.rank,
            "world_size": self.world_size,
            "epoch": epoch,
            "file_index": shard,
            "row_group_index": group,
            "doc_offset": offset,
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
                          ("world_size", self.world_size), ("rank", self.rank)):
            if state.get(key) != mine:
                raise NanochatError(f"data cursor mismatch: {key} is {state.get(key)!r} in the cursor but {mine!r} "
                                    "here (different dataset, split or world size)")
        nxt = self._stream.ordinal(int(state["epoch"]), int(state["file_index"]), int(state["row_group_index"]),
                                   int(state["doc_offset"]))
        buf = [nxt - int(d) for d in state.get("buffer", [])]
        if any(o < 0 or o >= nxt for o in buf) or buf != sorted(set(buf)):
            raise NanochatError("corrupt data cursor: bad buffer")
        stats = self._initial_state()["stats"]
        stats.update({k: int(v) for k, v in state.get("stats", {}).items() if k in stats})
        self._state = {"next": nxt, "buffer": buf, "batches": int(state.get("batches", 0)), "stats": stats}
        self._history.clear()

    def reset(self) -> None:
        self._state = self._initial_state()
        self._history.clear()

    @property
    def stats(self) -> dict:
        """Counters up to the last yielded batch (carried in the cursor across resumes).

        docs_read: documents taken into the packing buffer; docs: documents placed in rows; tokens: tokens in the
        yielded rows (B * (T+1) per batch); cropped: document tokens discarded by cropping; dropped: tokens of the
        incomplete last row/batch of a finite pass; cropped_fraction = cropped / (tokens + cropped).
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
                 "batches": self._state["batches"], "stats": dict(self._state["stats"])}
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

    def _tokenized(self, start: int, stop: threading.Event) -> Iterator[tuple[int, list[int]]]:
        """(ordinal, tokens) of the stream from `start` (up to the epoch limit)."""
        end = None if self.epochs is None else self.epochs * self._stream.docs_per_epoch
        o = start
        cached: tuple[int, int, list[str]] | None = None  # (shard, group, docs) of the last row group read
        while (end is None or o < end) and not stop.is_set():
            epoch, shard, group, offset = self._stream.position(o)
            if cached is None or cached[:2] != (shard, group):
                cached = (shard, group, self.source.read_row_group(self.split, shard, group))
            docs = cached[2]
            take = docs[offset: offset + self.read_docs]
            if end is not None:
                take = take[: end - o]
            if not take:
                raise NanochatError(f"row group {group} of file {shard} has fewer documents than its metadata says")
            for i, toks in enumerate(self._encode(take)):
                yield o + i, toks
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
        B, C = self.batch_size, self.seq_len + 1
        stats = st["stats"]
        buffer: "OrderedDict[int, list[int]]" = OrderedDict()
        by_len: list[tuple[int, int]] = []  # sorted (length, -ordinal)
        for o, toks in zip(st["buffer"], self._rebuild(st["buffer"])):
            toks = toks[:C]
            buffer[o] = toks
            by_len.append((len(toks), -o))
        by_len.sort()
        nxt = st["next"]
        stream = self._tokenized(nxt, stop)
        exhausted = False
        batches = st["batches"]
        pin = self.device.type == "cuda"

        def refill() -> None:
            nonlocal nxt, exhausted
            while len(buffer) < self.buffer_docs and not exhausted:
                try:
                    o, toks = next(stream)
                except StopIteration:
                    exhausted = True
                    return
                if len(toks) > C:
                    stats["cropped"] += len(toks) - C
                    toks = toks[:C]
                buffer[o] = toks
                bisect.insort(by_len, (len(toks), -o))
                nxt = o + 1
                stats["docs_read"] += 1

        while not stop.is_set():
            flat: list[int] = []
            rows_done = 0
            docs_used = cropped = 0
            while rows_done < B:
                refill()
                if not buffer:
                    break
                room = C
                while room > 0:
                    if not by_len:
                        refill()  # only a small buffer runs dry inside a row
                        if not by_len:
                            break
                    k = bisect.bisect_right(by_len, (room, 0)) - 1
                    if k >= 0:  # largest document that fits (ties: earliest)
                        n, neg = by_len.pop(k)
                        flat.extend(buffer.pop(-neg))
                        room -= n
                    else:  # nothing fits: the shortest document fills the rest, its tail is dropped
                        n, neg = by_len.pop(0)
                        flat.extend(buffer.pop(-neg)[:room])
                        cropped += n - room
                        room = 0
                    docs_used += 1
                if room > 0:  # end of a finite stream: incomplete row
                    stats["dropped"] += C - room
                    del flat[len(flat) - (C - room):]
                    break
                rows_done += 1
            if rows_done < B:  # finite stream ended: the incomplete batch is dropped
                stats["dropped"] += rows_done * C
                stats["cropped"] += cropped
                return
            stats["docs"] += docs_used
            stats["cropped"] += cropped
            stats["tokens"] += B * C
            batches += 1
            rows = torch.tensor(flat, dtype=torch.long).view(B, C)
            inputs, targets = rows[:, :-1].contiguous(), rows[:, 1:].contiguous()
            if pin:
                inputs, targets = inputs.pin_memory(), targets.pin_memory()
            state = {"next": nxt, "buffer": list(buffer.keys()), "batches": batches, "stats": dict(stats)}
            yield inputs, targets, state


def val_loader(source: Source, tokenizer: Any, batch_size: int, seq_len: int, steps: int | None = None,
               rank: int = 0, world_size: int = 1, **kwargs: Any) -> PackingLoader:
    """Validation batches from the start of the val split: one pass, or exactly `steps` batches (cycling)."""
    return PackingLoader(source, tokenizer, batch_size, seq_len, split="val", rank=rank, world_size=world_size,
                         epochs=None if steps is not None else 1, max_batches=steps, **kwargs)


def val_batches(*args: Any, **kwargs: Any) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    return iter(val_loader(*args, **kwargs))
