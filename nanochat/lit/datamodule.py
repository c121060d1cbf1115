"""LightningDataModule for pretraining: streaming packed batches with an exact, checkpointed data cursor.

Training packs with the chosen strategy; validation always packs like the reference (best fit, its 1000-document
buffer, ``val_tokens // (B * T * world)`` batches per rank), so val bpb is comparable with the reference's.
"""
from __future__ import annotations

from typing import Any, Iterator

import lightning as L
import torch

from nanochat.common import NanochatError
from nanochat.dataloader import REFERENCE_BUFFER_DOCS, PackingLoader, reference_val_steps
from nanochat.packing import check_packing
from nanochat.dataset import Source, get_source
from nanochat.hub_shards import download_for


class _TrainIterable:
    """What Lightning iterates for training.

    Deliberately has no state_dict/load_state_dict: the data module owns the cursor, because Lightning fetches one
    batch ahead and would otherwise checkpoint a position one batch too far.
    """

    def __init__(self, loader: PackingLoader):
        self.loader = loader

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return iter(self.loader)


class _ValIterable:
    """A fresh validation loader per iteration, so every validation run sees the same batches."""

    def __init__(self, make: Any, steps: int | None):
        self.make, self.steps = make, steps

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return iter(self.make())

    def __len__(self) -> int:
        if self.steps is None:
            raise TypeError("one pass over the validation split has no known length")
        return self.steps


class NanochatDataModule(L.LightningDataModule):
    """Packed pretraining batches from a `nanochat.dataset` source.

    Args:
        source: a source name ("sample", "fineweb_edu", "climbmix", "local") or a built `Source`.
        source_cfg: keyword options of the source (see `nanochat.dataset.get_source`); for a hub shard set with
            download=True the shards are fetched in `prepare_data` (once per node).
        tokenizer: a nanochat Tokenizer; None loads the default one (`nanochat.tokenizer.get_tokenizer()`).
        batch_size, seq_len: device batch size and sequence length.
        val_batch_size: defaults to batch_size.
        val_steps: batches per validation run (cycling the val split if needed, identical on every rank); None =
            one pass over this rank's share of the val split (ranks may then get different counts: prefer val_steps
            or val_tokens with DDP).
        val_tokens: alternatively, tokens per validation run across all ranks; val_steps =
            max(1, val_tokens // (val_batch_size * seq_len * world_size)) (the reference's eval_steps).
        buffer_docs, tokenizer_threads, prefetch: passed to `PackingLoader`.
        packing: the training loader's packing ("bestfit", "cropfit" or "concat"); validation is always bestfit.
        val_buffer_docs: the validation loader's best-fit buffer (the reference's 1000).
    """

    def __init__(self, source: str | Source = "sample", source_cfg: dict | None = None, tokenizer: Any = None,
                 batch_size: int = 8, seq_len: int = 2048, val_batch_size: int | None = None,
                 val_steps: int | None = None, val_tokens: int | None = None, buffer_docs: int = 1000,
                 tokenizer_threads: int = 4, prefetch: int = 4, packing: str = "bestfit",
                 val_buffer_docs: int = REFERENCE_BUFFER_DOCS):
        super().__init__()
        self.packing = check_packing(packing)
        if val_buffer_docs < 1:
            raise NanochatError("val_buffer_docs must be >= 1")
        self.val_buffer_docs = val_buffer_docs
        self.source_name = source if isinstance(source, str) else source.name
        self._source = source if isinstance(source, Source) else None
        self.source_cfg = dict(source_cfg or {})
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.seq_len = seq_len
        self.val_batch_size = val_batch_size or batch_size
        self.val_steps = val_steps
        self.val_tokens = val_tokens
        self.loader_kwargs = {"buffer_docs": buffer_docs, "tokenizer_threads": tokenizer_threads,
                              "prefetch": prefetch}
        self.train_loader: PackingLoader | None = None
        self._pending: dict | None = None  # cursors restored from a checkpoint, applied to the next train loader
        self._consumed = 0                 # training batches the trainer has actually taken (not just fetched)
        self._start_batches = 0

    # -- helpers -------------------------------------------------------------------------------------------------

    def _rank_world(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        if trainer is not None:
            return int(trainer.global_rank), int(trainer.world_size)
        return 0, 1

    @property
    def source(self) -> Source:
        if self._source is None:
            cfg = {k: v for k, v in self.source_cfg.items() if k != "download"}
            self._source = get_source(self.source_name, **cfg)
        return self._source

    def _tokenizer(self) -> Any:
        if self.tokenizer is None:
            from nanochat.tokenizer import get_tokenizer

            self.tokenizer = get_tokenizer()
        return self.tokenizer

    # -- Lightning hooks -----------------------------------------------------------------------------------------

    def prepare_data(self) -> None:
        if self._source is None:
            download_for(self.source_name, self.source_cfg)  # hub shard sets with download=true (once per node)

    def setup(self, stage: str | None = None) -> None:
        _ = self.source  # build (and validate) the source early, with a clear error

    def train_dataloader(self) -> _TrainIterable:
        rank, world = self._rank_world()
        cursor = self._take_restored_cursor(rank, world)
        self.train_loader = PackingLoader(self.source, self._tokenizer(), self.batch_size, self.seq_len,
                                          split="train", rank=rank, world_size=world, cursor=cursor,
                                          packing=self.packing, **self.loader_kwargs)
        self._start_batches = self.train_loader.batches_yielded
        self._consumed = 0
        return _TrainIterable(self.train_loader)

    def val_dataloader(self) -> Any:
        if not self.source.has_split("val"):
            return []
        rank, world = self._rank_world()
        steps = self.val_steps
        if steps is None and self.val_tokens:
            steps = reference_val_steps(int(self.val_tokens), self.val_batch_size, self.seq_len, world)
        kwargs = dict(self.loader_kwargs, buffer_docs=self.val_buffer_docs)

        def make() -> PackingLoader:
            return PackingLoader(self.source, self._tokenizer(), self.val_batch_size, self.seq_len, split="val",
                                 rank=rank, world_size=world, epochs=None if steps is not None else 1,
                                 max_batches=steps, packing="bestfit", **kwargs)

        return _ValIterable(make, steps)

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        trainer = getattr(self, "trainer", None)
        if trainer is not None and trainer.training:
            self._consumed += 1
        return batch

    def _take_restored_cursor(self, rank: int, world: int) -> dict | None:
        """This rank's cursor from a restored checkpoint (once), or None for a fresh start."""
        if self._pending is None:
            return None
        cursors = self._pending.get("cursors", {})
        if str(world) != str(self._pending.get("world_size", world)) or str(rank) not in cursors:
            raise NanochatError(f"checkpoint holds data cursors for world size {self._pending.get('world_size')}, "
                                f"this run has {world}")
        self._pending = None
        return cursors[str(rank)]

    # -- checkpointed state --------------------------------------------------------------------------------------

    def _local_cursor(self) -> dict | None:
        if self.train_loader is None:
            return None
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return self.train_loader.state_dict()
        return self.train_loader.state_dict_at(self._start_batches + self._consumed)

    def state_dict(self) -> dict:
        rank, world = self._rank_world()
        if self.train_loader is None:
            return dict(self._pending) if self._pending else {}
        cursor = self._local_cursor()
        if world > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            gathered: list = [None] * world
            torch.distributed.all_gather_object(gathered, cursor)
            cursors = {str(r): c for r, c in enumerate(gathered)}
        else:
            cursors = {str(rank): cursor}
        return {"world_size": world, "cursors": cursors}

    def load_state_dict(self, state_dict: dict) -> None:
        if not state_dict:
            return
        if "cursors" not in state_dict:
            raise NanochatError("checkpoint data-module state has no data cursors")
        self._pending = dict(state_dict)
        self.train_loader = None  # the cursor applies to the loader built next
