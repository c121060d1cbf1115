"""Packing strategies: how a stream of BOS-prefixed documents becomes training rows.

The one idea: a packer pulls tokenized documents from a stream (chunks of ``(first ordinal, token lists)``) and
hands out one batch at a time as a flat token list; its whole state is "which documents are buffered" plus "where
the stream continues", so a cursor can rebuild it exactly by re-reading those documents.

* ``bestfit`` - the reference nanochat's BOS-aligned best-fit (January 2026, commit 348fbb3). Rows of ``T+1``
  tokens. Before *every* placement the buffer is topped up to at least ``buffer_docs`` documents, a whole chunk
  of ``refill_docs`` (128) documents of one row group at a time. A placement takes the *largest* buffered
  document that fits the room left in the row (ties: the oldest); when none fits, the *shortest* document (ties:
  the oldest) fills the rest of the row and its tail is dropped. Documents stay whole in the buffer, so a
  document longer than a row is only ever used, cropped, as that shortest one.
* ``cropfit`` - the earlier loader of this project: a document longer than a row is cropped to ``T+1`` tokens when
  it enters the buffer; the buffer is refilled one document at a time at the start of each row; best fit as
  above but ties among the cropped choice go to the newest.
* ``concat`` - the first release (v0): documents concatenated into one stream; each batch is the next
  ``B*T + 1`` tokens (``inputs = w[:-1].view(B, T)``, ``targets = w[1:].view(B, T)``), so rows start
  mid-document and nothing is cropped.

The reference streams forever; on a finite pass (``epochs`` set) the packers here place what is left and drop
the last incomplete batch (counted in ``stats["dropped"]``).
"""
from __future__ import annotations

import bisect
from typing import Callable, Iterator

from nanochat.common import NanochatError

PACKINGS = ("bestfit", "cropfit", "concat")
PRESET_PACKING = {"jul2026": "bestfit", "jan2026": "bestfit", "v0": "concat"}
REFERENCE_BUFFER_DOCS = 1000  # the reference's buffer_size
REFERENCE_REFILL_DOCS = 128   # the reference's tokenizer_batch_size: documents added per refill

Chunk = tuple[int, list[list[int]]]  # (ordinal of the first document, token lists of consecutive documents)


def default_packing(preset: str) -> str:
    """The packing a reference preset trains with: jan2026 and jul2026 -> bestfit, v0 -> concat."""
    try:
        return PRESET_PACKING[preset]
    except KeyError:
        raise NanochatError(f"no default packing for preset {preset!r}; known: {', '.join(PRESET_PACKING)}") from None


def check_packing(packing: str) -> str:
    if packing not in PACKINGS:
        raise NanochatError(f"unknown packing {packing!r}; choose one of: {', '.join(PACKINGS)}")
    return packing


def resolve_packing(packing: str | None, preset: str) -> str:
    """`packing` itself, or the preset's default when it is None (the data config's ``loader.packing: null``)."""
    return default_packing(preset) if packing is None else check_packing(packing)


def new_stats() -> dict:
    """docs_read/tokens_read: documents (tokens) taken from the stream; docs: documents placed (or started, for
    concat) in yielded batches; tokens: tokens of yielded batches; cropped: document tokens discarded by
    cropping; dropped: tokens of the incomplete last batch of a finite pass."""
    return {"docs_read": 0, "tokens_read": 0, "docs": 0, "tokens": 0, "cropped": 0, "dropped": 0}


class Packer:
    """Common part: batch geometry, the stats dict and the chunk stream (``None`` once a finite stream ends)."""

    def __init__(self, batch_size: int, seq_len: int, stats: dict, chunks: Iterator[Chunk], next_ordinal: int):
        self.B, self.T, self.C = batch_size, seq_len, seq_len + 1
        self.stats = stats
        self._chunks = chunks
        self.next = next_ordinal  # ordinal of the next document the stream would give
        self.exhausted = False

    @property
    def width(self) -> int:
        """Tokens per batch."""
        return self.B * self.C

    def _pull(self, count: bool = True) -> Chunk | None:
        if self.exhausted:
            return None
        item = next(self._chunks, None)
        if item is None:
            self.exhausted = True
            return None
        first, lists = item
        self.next = first + len(lists)
        if count:
            self._count(lists)
        return item

    def _count(self, lists: list[list[int]]) -> None:
        self.stats["docs_read"] += len(lists)
        self.stats["tokens_read"] += sum(len(t) for t in lists)

    def state(self) -> dict:
        """``next`` ordinal, buffered ordinals (sorted) and a token offset into ``next`` (concat only)."""
        raise NotImplementedError

    def next_batch(self) -> list[int] | None:
        raise NotImplementedError


class _RowPacker(Packer):
    """Rows of T+1 tokens built by `_fill_row`; the incomplete last batch of a finite stream is dropped."""

    def _fill_row(self, flat: list[int]) -> tuple[bool, int, int]:
        raise NotImplementedError

    def next_batch(self) -> list[int] | None:
        flat: list[int] = []
        docs = cropped = 0
        for _ in range(self.B):
            start = len(flat)
            complete, n, c = self._fill_row(flat)
            docs, cropped = docs + n, cropped + c
            if not complete:  # finite stream over: the rows built so far and this partial row are dropped
                self.stats["dropped"] += len(flat)
                self.stats["cropped"] += cropped
                del flat[start:]
                return None
        self.stats["docs"] += docs
        self.stats["cropped"] += cropped
        self.stats["tokens"] += len(flat)
        return flat


class BestFit(_RowPacker):
    """The reference's best-fit (see the module docstring); a sorted (length, ordinal) index replaces its linear
    scans and picks the same document."""

    def __init__(self, batch_size: int, seq_len: int, stats: dict, chunks: Iterator[Chunk], next_ordinal: int,
                 buffered: list[tuple[int, list[int]]], buffer_docs: int = REFERENCE_BUFFER_DOCS):
        super().__init__(batch_size, seq_len, stats, chunks, next_ordinal)
        self.buffer_docs = buffer_docs
        self.docs: dict[int, list[int]] = {}
        self.keys: list[tuple[int, int]] = []  # sorted (length, ordinal)
        for o, toks in buffered:
            self.docs[o] = toks
            self.keys.append((len(toks), o))
        self.keys.sort()

    def _refill(self) -> None:
        while len(self.docs) < self.buffer_docs:
            item = self._pull()
            if item is None:
                return
            first, lists = item
            for i, toks in enumerate(lists):
                self.docs[first + i] = toks
                bisect.insort(self.keys, (len(toks), first + i))

    def _fill_row(self, flat: list[int]) -> tuple[bool, int, int]:
        keys, room, used, cropped = self.keys, self.C, 0, 0
        while room > 0:
            self._refill()  # the reference tops the buffer up before every placement
            if not keys:
                return False, used, cropped
            k = bisect.bisect_right(keys, (room, float("inf"))) - 1
            if k >= 0:  # largest length that fits; among equals the oldest document
                k = bisect.bisect_left(keys, (keys[k][0], -1))
                n, o = keys.pop(k)
                flat.extend(self.docs.pop(o))
                room -= n
            else:  # nothing fits: the shortest (oldest among equals) fills the row, its tail is dropped
                n, o = keys.pop(0)
                flat.extend(self.docs.pop(o)[:room])
                cropped += n - room
                room = 0
            used += 1
        return True, used, cropped

    def state(self) -> dict:
        return {"next": self.next, "buffer": sorted(self.docs), "token_offset": 0}


class CropFit(_RowPacker):
    """This project's earlier packer (see the module docstring); long documents are cropped on entry."""

    def __init__(self, batch_size: int, seq_len: int, stats: dict, chunks: Iterator[Chunk], next_ordinal: int,
                 buffered: list[tuple[int, list[int]]], buffer_docs: int = REFERENCE_BUFFER_DOCS):
        super().__init__(batch_size, seq_len, stats, chunks, next_ordinal)
        self.buffer_docs = buffer_docs
        self.docs: dict[int, list[int]] = {}
        self.keys: list[tuple[int, int]] = []  # sorted (length, -ordinal)
        self._pending: list[tuple[int, list[int]]] = []  # tokenized but not yet taken into the buffer
        for o, toks in buffered:
            toks = toks[: self.C]
            self.docs[o] = toks
            self.keys.append((len(toks), -o))
        self.keys.sort()
        self._taken = next_ordinal

    def _take_one(self) -> bool:
        if not self._pending:
            item = self._pull(count=False)  # counted as documents enter the buffer
            if item is None:
                return False
            first, lists = item
            self._pending = [(first + i, t) for i, t in enumerate(lists)][::-1]
        o, toks = self._pending.pop()
        self._count([toks])
        if len(toks) > self.C:
            self.stats["cropped"] += len(toks) - self.C
            toks = toks[: self.C]
        self.docs[o] = toks
        bisect.insort(self.keys, (len(toks), -o))
        self._taken = o + 1
        return True

    def _refill(self) -> None:
        while len(self.docs) < self.buffer_docs and self._take_one():
            pass

    def _fill_row(self, flat: list[int]) -> tuple[bool, int, int]:
        self._refill()
        keys, room, used, cropped = self.keys, self.C, 0, 0
        while room > 0:
            if not keys:
                self._refill()  # only a small buffer runs dry inside a row
                if not keys:
                    return False, used, cropped
            k = bisect.bisect_right(keys, (room, 0)) - 1
            if k >= 0:
                n, neg = keys.pop(k)
                flat.extend(self.docs.pop(-neg))
                room -= n
            else:
                n, neg = keys.pop(0)
                flat.extend(self.docs.pop(-neg)[:room])
                cropped += n - room
                room = 0
            used += 1
        return True, used, cropped

    def state(self) -> dict:
        return {"next": self._taken, "buffer": sorted(self.docs), "token_offset": 0}


class Concat(Packer):
    """v0: the next B*T+1 tokens of the concatenated stream per batch (consecutive batches do not overlap)."""

    def __init__(self, batch_size: int, seq_len: int, stats: dict, chunks: Iterator[Chunk], next_ordinal: int,
                 token_offset: int = 0):
        super().__init__(batch_size, seq_len, stats, chunks, next_ordinal)
        self._queue: list[tuple[int, list[int]]] = []  # pulled documents, reversed (pop from the end)
        self._doc: tuple[int, list[int]] | None = None  # the document being consumed
        self._off = token_offset                        # tokens of it already consumed
        self._resume_offset = token_offset

    @property
    def width(self) -> int:
        return self.B * self.T + 1

    def _next_doc(self) -> bool:
        if not self._queue:
            item = self._pull(count=False)  # counted as documents are reached
            if item is None:
                return False
            first, lists = item
            self._queue = [(first + i, t) for i, t in enumerate(lists)][::-1]
        self._doc = self._queue.pop()
        if self._resume_offset:  # the cursor's partly consumed document (counted before the cursor)
            if self._resume_offset >= len(self._doc[1]):
                raise NanochatError("corrupt data cursor: token offset beyond its document")
            self._off, self._resume_offset = self._resume_offset, 0
        else:
            self._count([self._doc[1]])
            self._off = 0
        return True

    def next_batch(self) -> list[int] | None:
        need = self.width
        out: list[int] = []
        started = 0
        while len(out) < need:
            if self._doc is None and not self._next_doc():
                self.stats["dropped"] += len(out)
                return None
            toks = self._doc[1]
            if self._off == 0:
                started += 1
            piece = toks[self._off: self._off + need - len(out)]
            out.extend(piece)
            self._off += len(piece)
            if self._off >= len(toks):
                self._doc = None
        self.stats["docs"] += started
        self.stats["tokens"] += need
        return out

    def state(self) -> dict:
        if self._doc is not None:
            nxt = self._doc[0]
        elif self._queue:
            nxt = self._queue[-1][0]
        else:
            nxt = self.next
        return {"next": nxt, "buffer": [], "token_offset": self._off if self._doc is not None else 0}


def make_packer(packing: str, batch_size: int, seq_len: int, stats: dict, chunks: Iterator[Chunk],
                next_ordinal: int, buffered: list[tuple[int, list[int]]], token_offset: int = 0,
                buffer_docs: int = REFERENCE_BUFFER_DOCS) -> Packer:
    check_packing(packing)
    if packing == "concat":
        if buffered:
            raise NanochatError("corrupt data cursor: concat packing has no document buffer")
        return Concat(batch_size, seq_len, stats, chunks, next_ordinal, token_offset)
    if token_offset:
        raise NanochatError(f"corrupt data cursor: {packing} packing has no token offset")
    cls: Callable[..., Packer] = BestFit if packing == "bestfit" else CropFit
    return cls(batch_size, seq_len, stats, chunks, next_ordinal, buffered, buffer_docs)
