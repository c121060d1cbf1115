"""Chat batches for mid-training and SFT: conversations -> (inputs, targets) rows with an exact cursor.

Three layouts, one idea: a target is -1 wherever nothing should be learned (padding, and - when masking is on -
every token the assistant did not write), so the training step is the same as pretraining's.

- `pack` (mid-training): BOS-aligned best-fit packing of whole conversations into rows of seq_len + 1 tokens,
  like base pretraining packs documents. A buffer of conversations is topped up before every placement; the
  largest one that fits the row's remainder goes next (ties: the oldest); when none fits, the rest of the row is
  padded. A conversation longer than a row is split into row-sized pieces (never dropped), and counted.
- `pad` (SFT): one conversation per row, padded to the longest row of the micro-batch; a conversation longer
  than a row is truncated to it (counted). Batches come in groups of `accum` micro-batches (one optimizer
  step) and each carries the number of supervised targets of its whole step, so the loss can be normalised
  by it (see nanochat.lit.module). Within a step the conversations are sorted by length before they are cut
  into micro-batches, which removes most of the padding without changing the step's gradient.
- `bestfit` (SFT as the reference trains it since 2026): the `pack` rows - best fit of whole conversations into
  BOS-aligned rows, the rest of a row padded when nothing fits - but a conversation longer than a row is
  truncated to it (counted) rather than split, so every row starts at a conversation's start; the reference
  crops at render time to the same effect. Batches come in optimizer steps with the step's supervised-target
  count, as in `pad`.

Conversations are taken in the task's order (a TaskMixture is already shuffled), rank r of w takes every w-th
one, and the order repeats each epoch. The cursor (epoch, next index, the buffer's contents) is plain data;
`state_dict_at(n)` gives the cursor after the first n batches, so a resumed run continues exactly.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any, Iterator, Sequence

import torch

from nanochat.common import NanochatError

LAYOUTS = ("pack", "pad", "bestfit")
STEP_LAYOUTS = ("pad", "bestfit")  # batches carry their optimizer step's supervised-target count
REFERENCE_SFT_BUFFER = 100  # conversations the reference's SFT packer keeps to choose from


class ChatLoader:
    def __init__(self, task: Sequence, tokenizer: Any, batch_size: int, seq_len: int, layout: str = "pack",
                 mask: bool = True, rank: int = 0, world_size: int = 1, accum: int = 1, buffer_size: int = 64,
                 cursor: dict | None = None, max_batches: int | None = None, epochs: int | None = None):
        if layout not in LAYOUTS:
            raise NanochatError(f"chat layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
        if len(task) < world_size:
            raise NanochatError(f"the chat data has {len(task)} conversations, fewer than the {world_size} ranks")
        self.task, self.tokenizer = task, tokenizer
        self.batch_size, self.seq_len, self.layout, self.mask = batch_size, seq_len, layout, mask
        self.rank, self.world_size, self.accum = rank, world_size, max(1, accum) if layout in STEP_LAYOUTS else 1
        self.buffer_size, self.max_batches, self.epochs = buffer_size, max_batches, epochs
        self.bos = tokenizer.bos_token_id
        self._start = dict(cursor) if cursor else {"epoch": 0, "index": 0, "buffer": [], "batches": 0}
        self._history: OrderedDict[int, dict] = OrderedDict()
        self.stats = {"conversations": 0, "split": 0, "truncated": 0, "padded_positions": 0, "positions": 0}

    # -- cursor ------------------------------------------------------------------------------------------------
    @property
    def batches_yielded(self) -> int:
        return self._start["batches"]

    def state_dict(self) -> dict:
        return dict(self._history[next(reversed(self._history))]) if self._history else dict(self._start)

    def state_dict_at(self, batches: int) -> dict:
        if batches in self._history:
            return dict(self._history[batches])
        if batches == self._start["batches"]:
            return dict(self._start)
        raise NanochatError(f"no data cursor recorded for batch {batches}")

    def load_state_dict(self, state: dict) -> None:
        self._start = dict(state)
        self._history.clear()

    # -- conversations ------------------------------------------------------------------------------------------
    def _ordinal(self, epoch: int, index: int) -> int:
        return index * self.world_size + self.rank  # this rank's index-th conversation

    def _render(self, ordinal: int) -> tuple[list[int], list[int]]:
        from nanochat.chat import render_conversation

        ids, mask = render_conversation(self.tokenizer, self.task[ordinal])
        return ids, mask

    def _pieces(self, ordinal: int) -> list[tuple[int, int, list[int], list[int]]]:
        """(ordinal, piece, ids, mask) items of one conversation, each at most a row long."""
        ids, mask = self._render(ordinal)
        row = self.seq_len + 1
        if self.layout != "pack" or len(ids) <= row:  # pad, bestfit: one row at most, truncated
            if len(ids) > row:
                self.stats["truncated"] += 1
            return [(ordinal, 0, ids[:row], mask[:row])]
        self.stats["split"] += 1
        return [(ordinal, k, ids[s:s + row], mask[s:s + row]) for k, s in enumerate(range(0, len(ids), row))]

    def _next_ordinals(self, st: dict) -> Iterator[int]:
        per_rank = (len(self.task) - self.rank + self.world_size - 1) // self.world_size
        while True:
            if st["index"] >= per_rank:
                if self.epochs is not None and st["epoch"] + 1 >= self.epochs:
                    return
                st["epoch"], st["index"] = st["epoch"] + 1, 0
            ordinal = self._ordinal(st["epoch"], st["index"])
            st["index"] += 1
            self.stats["conversations"] += 1
            yield ordinal

    # -- rows ---------------------------------------------------------------------------------------------------
    def _row(self, ids: list[int], mask: list[int], width: int) -> tuple[list[int], list[int]]:
        """inputs and targets of one row, padded to width with BOS (targets -1 where nothing is learned); the
        inputs keep a padded row's last token, as the reference's rows do (its prediction is never learned)."""
        n = len(ids)
        inputs = (ids + [self.bos] * (width - (n - 1)))[:width]
        targets = [t if (m or not self.mask) else -1 for t, m in zip(ids[1:], mask[1:])] + [-1] * (width - (n - 1))
        self.stats["padded_positions"] += width - (n - 1)
        self.stats["positions"] += width
        return inputs, targets

    def _pack_rows(self, st: dict, source: Iterator[int], buffer: list) -> Iterator[tuple[list[int], list[int]]]:
        row_len = self.seq_len + 1
        while True:
            ids: list[int] = []
            mask: list[int] = []
            while len(ids) < row_len:
                while len(buffer) < self.buffer_size:  # top up before every placement
                    ordinal = next(source, None)
                    if ordinal is None:
                        break
                    buffer.extend(self._pieces(ordinal))
                if not buffer:
                    break
                room = row_len - len(ids)
                best = None
                for i, item in enumerate(buffer):  # largest that fits; the oldest wins ties
                    if len(item[2]) <= room and (best is None or len(item[2]) > len(buffer[best][2])):
                        best = i
                if best is None:
                    break
                item = buffer.pop(best)
                ids += item[2]
                mask += item[3]
            if len(ids) < 2:
                return
            yield self._row(ids, mask, self.seq_len)

    def _pad_rows(self, source: Iterator[int], buffer: list) -> Iterator[tuple[list[int], list[int]]]:
        while True:
            if buffer:
                item = buffer.pop(0)
            else:
                ordinal = next(source, None)
                if ordinal is None:
                    return
                item = self._pieces(ordinal)[0]
            if len(item[2]) >= 2:
                yield item[2], item[3]

    def _restore_buffer(self, st: dict) -> list:
        buffer = []
        for ordinal, piece in st["buffer"]:
            pieces = self._pieces(ordinal)
            buffer.append(pieces[min(piece, len(pieces) - 1)])
        return buffer

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        st = {k: (list(v) if isinstance(v, list) else v) for k, v in self._start.items()}
        buffer = self._restore_buffer(st)
        source = self._next_ordinals(st)
        self._history.clear()
        self._history[st["batches"]] = {**st, "buffer": [[o, p] for o, p, _, _ in buffer]}
        if self.layout == "pack":
            rows = self._pack_rows(st, source, buffer)
            while self.max_batches is None or st["batches"] < self.max_batches:
                batch = [r for _, r in zip(range(self.batch_size), rows)]
                if len(batch) < self.batch_size:
                    return
                st["batches"] += 1
                self._remember(st, buffer)
                yield (torch.tensor([b[0] for b in batch]), torch.tensor([b[1] for b in batch]))
            return
        packed = self.layout == "bestfit"
        rows = self._pack_rows(st, source, buffer) if packed else self._pad_rows(source, buffer)
        per_step = self.accum * self.batch_size
        while self.max_batches is None or st["batches"] < self.max_batches:
            items = [r for _, r in zip(range(per_step), rows)]
            if len(items) < per_step:  # a finite pass drops its incomplete last step
                return
            if packed:  # rows of seq_len already, in packing order
                step = [items[k * self.batch_size:(k + 1) * self.batch_size] for k in range(self.accum)]
            else:
                # the step's conversations sorted by length before they are split into micro-batches: the same
                # gradient (the loss is normalised over the whole step) with far less padding
                items.sort(key=lambda r: len(r[0]))
                step = []
                for k in range(self.accum):
                    batch = items[k * self.batch_size:(k + 1) * self.batch_size]
                    width = max(len(ids) for ids, _ in batch) - 1
                    step.append([self._row(ids, mask, width) for ids, mask in batch])
            step_targets = sum(sum(t >= 0 for t in row[1]) for batch in step for row in batch)
            for batch in step:
                if self.max_batches is not None and st["batches"] >= self.max_batches:
                    return
                st["batches"] += 1
                self._remember(st, buffer)
                yield (torch.tensor([b[0] for b in batch]), torch.tensor([b[1] for b in batch]),
                       torch.tensor(step_targets))

    def _remember(self, st: dict, buffer: list) -> None:
        """Cursor after this batch. Within an SFT step the cursor points at the step's start plus an offset."""
        snap = {**st, "buffer": [[o, p] for o, p, _, _ in buffer]}
        self._history[st["batches"]] = snap
        while len(self._history) > 64:
            self._history.popitem(last=False)
