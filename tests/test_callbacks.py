"""Atomic checkpoints (disk full keeps the last good file), the non-finite loss guard, MFU arithmetic."""
import errno

import pytest
import torch

from nanochat.common import NanochatError
from nanochat.lit.callbacks import AtomicCheckpointIO, NonFiniteGuard, ThroughputMFU


def test_disk_full_during_save_keeps_previous_checkpoint(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"step": 1}, path)
    good = path.read_bytes()

    def full_disk(obj, f, *a, **k):
        with open(f, "wb") as fh:
            fh.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(NanochatError, match="No space left"):
        io.save_checkpoint({"step": 2}, path)
    assert path.read_bytes() == good
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no temp file left behind
    monkeypatch.undo()
    assert io.load_checkpoint(path)["step"] == 1


def test_corrupt_checkpoint_load_is_a_clear_error(tmp_path):
    bad = tmp_path / "x.ckpt"
    bad.write_bytes(b"\x00garbage")
    with pytest.raises(NanochatError, match="corrupt"):
        AtomicCheckpointIO().load_checkpoint(bad)


class _Trainer:
    global_step = 7
    checkpoint_callback = None


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_guard(value):
    with pytest.raises(NanochatError, match="non-finite loss .* at step 7"):
        NonFiniteGuard().on_train_batch_end(_Trainer(), None, {"loss": torch.tensor(value)}, None, 0)
    NonFiniteGuard().on_train_batch_end(_Trainer(), None, {"loss": torch.tensor(1.0)}, None, 0)


def test_nan_loss_stops_training_before_checkpointing(tmp_path):
    """A real Lightning run whose loss turns NaN at step 3: stops with the guard's error, last.ckpt is step 2."""
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint

    class Net(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(1))

        def training_step(self, batch, i):
            loss = (self.w * batch).sum()
            return loss * float("nan") if self.global_step == 3 else loss

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    class Data:
        def __iter__(self):
            while True:
                yield torch.ones(2)

    ckpt = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=1, save_last=True)
    trainer = L.Trainer(max_steps=10, callbacks=[NonFiniteGuard(), ckpt], plugins=[AtomicCheckpointIO()],
                        logger=False, enable_progress_bar=False, enable_model_summary=False)
    with pytest.raises(NanochatError, match="at step 4"):  # the 4th optimizer step
        trainer.fit(Net(), train_dataloaders=Data())
    assert torch.load(tmp_path / "last.ckpt", weights_only=False)["global_step"] == 3


def test_mfu_arithmetic():
    cb = ThroughputMFU(flops_per_token=1e6, tokens_per_step=1000, peak_flops=1e10)
    tok_s = 1000 / 0.5
    assert cb.flops_per_token * tok_s / cb.peak_flops == pytest.approx(0.2)
