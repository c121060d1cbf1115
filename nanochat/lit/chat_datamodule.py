"""LightningDataModule for the chat stages: a task mixture -> `nanochat.chat_data.ChatLoader` batches.

It shares the pretraining data module's cursor mechanics (the module owns the cursor, counts the batches the
trainer really took, gathers every rank's cursor into the checkpoint), so mid-training and SFT resume exactly.
"""
from __future__ import annotations

from typing import Any, Sequence

from nanochat.chat_data import ChatLoader
from nanochat.lit.datamodule import NanochatDataModule, _TrainIterable, _ValIterable


class ChatDataModule(NanochatDataModule):
    """Batches of rendered conversations.

    Args:
        train, val: tasks (indexable conversations), already built; val may be None (no validation).
        layout: "pack" (mid-training), "pad" (SFT, one conversation per row) or "bestfit" (SFT, packed rows);
            see nanochat.chat_data.
        mask: targets only on what the assistant writes (always on for SFT; a switch for mid-training).
        accum: micro-batches per optimizer step (SFT: each batch carries its step's supervised-target count).
        buffer_size: conversations the packer chooses from (pack, bestfit).
        val_steps: validation batches per run (identical on every rank).
    """

    def __init__(self, train: Sequence, val: Sequence | None, tokenizer: Any, batch_size: int, seq_len: int,
                 layout: str = "pack", mask: bool = True, accum: int = 1, val_steps: int = 8, buffer_size: int = 64):
        super().__init__(source="chat", tokenizer=tokenizer, batch_size=batch_size, seq_len=seq_len,
                         val_steps=val_steps)
        self.train_task, self.val_task = train, val
        self.chat_kwargs = {"layout": layout, "mask": mask, "buffer_size": buffer_size}
        self.accum = accum

    def prepare_data(self) -> None:  # tasks are built (and downloaded) by the stage before training
        return None

    def setup(self, stage: str | None = None) -> None:
        return None

    def train_dataloader(self) -> _TrainIterable:
        rank, world = self._rank_world()
        cursor = self._take_restored_cursor(rank, world)
        self.train_loader = ChatLoader(self.train_task, self.tokenizer, self.batch_size, self.seq_len, rank=rank,
                                       world_size=world, accum=self.accum, cursor=cursor, **self.chat_kwargs)
        self._start_batches = self.train_loader.batches_yielded
        self._consumed = 0
        return _TrainIterable(self.train_loader)

    def val_dataloader(self) -> Any:
        if self.val_task is None or len(self.val_task) == 0:
            return []
        rank, world = self._rank_world()

        def make() -> ChatLoader:
            # cycles the held-out set if it is shorter than the validation budget
            return ChatLoader(self.val_task, self.tokenizer, self.val_batch_size, self.seq_len, rank=rank,
                              world_size=world, accum=1, max_batches=self.val_steps, **self.chat_kwargs)

        return _ValIterable(make, self.val_steps)
