"""Atomic checkpoints (disk full keeps the last good file), the non-finite loss guard, the throughput/MFU callback."""
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


class _Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


class _StepTrainer:
    """What ThroughputMFU reads from a Trainer: the optimizer-step count, the device, the world size."""

    def __init__(self, world_size=1):
        self.global_step = 0
        self.world_size = world_size
        self.strategy = type("S", (), {"root_device": torch.device("cpu")})()


class _Module:
    def __init__(self):
        self.logged = []

    def log_dict(self, d, **kw):
        self.logged.append(dict(d))


def _drive(cb, trainer, module, clock, micro_batches, accum, seconds_per_micro_batch, validate_after=None,
           validation_seconds=0.0, batch=None):
    """Run the callback's hooks the way Lightning calls them, on a fake clock."""
    cb.on_train_start(trainer, module)
    for i in range(micro_batches):
        cb.on_train_batch_start(trainer, module, batch, i)
        clock.t += seconds_per_micro_batch
        if (i + 1) % accum == 0:
            trainer.global_step += 1
        cb.on_train_batch_end(trainer, module, {"loss": torch.tensor(1.0)}, batch, i)
        if validate_after is not None and trainer.global_step == validate_after and (i + 1) % accum == 0:
            cb.on_validation_start(trainer, module)
            clock.t += validation_seconds
            cb.on_validation_end(trainer, module)


@pytest.mark.parametrize("world", [1, 2])
def test_throughput_mfu_callback_per_optimizer_step(monkeypatch, world):
    clock = _Clock()
    monkeypatch.setattr(time_module(), "perf_counter", clock)
    cb = ThroughputMFU(flops_per_token=1e6, tokens_per_step=1000, peak_flops=1e10)
    trainer, module = _StepTrainer(world), _Module()
    # 4 optimizer steps of 0.5 s, and a 30 s validation after step 2 that must not count as training time
    _drive(cb, trainer, module, clock, micro_batches=4, accum=1, seconds_per_micro_batch=0.5, validate_after=2,
           validation_seconds=30.0)
    assert [s for s, _, _ in cb.history] == [1, 2, 3, 4]
    for _, tok_s, mfu in cb.history:
        assert tok_s == pytest.approx(2000.0)  # 1000 tokens (all ranks) per 0.5 s
        assert mfu == pytest.approx(1e6 * 2000.0 / (1e10 * world))
    assert module.logged[-1] == pytest.approx({"perf/tok_per_s": 2000.0, "perf/mfu": 0.2 / world, "perf/step_s": 0.5})


def test_throughput_mfu_without_peak_flops_is_nan(monkeypatch):
    clock = _Clock()
    monkeypatch.setattr(time_module(), "perf_counter", clock)
    cb = ThroughputMFU(flops_per_token=1e6, tokens_per_step=1000, peak_flops=0)
    _drive(cb, _StepTrainer(), _Module(), clock, micro_batches=2, accum=1, seconds_per_micro_batch=1.0)
    assert [r[1] for r in cb.history] == [1000.0, 1000.0] and all(r[2] != r[2] for r in cb.history)


def test_throughput_mfu_callback_with_accumulation(monkeypatch):
    """Only whole optimizer steps are timed (not the first micro-batch of one), counting from a resumed step."""
    clock = _Clock()
    monkeypatch.setattr(time_module(), "perf_counter", clock)
    cb = ThroughputMFU(flops_per_token=1e6, tokens_per_step=1000, peak_flops=1e10)
    trainer, module = _StepTrainer(), _Module()
    trainer.global_step = 5  # a resumed run: steps are counted from the checkpoint's
    _drive(cb, trainer, module, clock, micro_batches=6, accum=2, seconds_per_micro_batch=0.25)
    assert cb.history == [(6, pytest.approx(2000.0), pytest.approx(0.2)), (7, pytest.approx(2000.0), pytest.approx(0.2)),
                          (8, pytest.approx(2000.0), pytest.approx(0.2))]


def test_throughput_mfu_counts_the_real_tokens_of_the_batches(monkeypatch):
    """Batches that carry tensors are counted as they are (x ranks); targets >= 0 are the supervised tokens."""
    clock = _Clock()
    monkeypatch.setattr(time_module(), "perf_counter", clock)
    cb = ThroughputMFU(flops_per_token=1e6, tokens_per_step=999_999, peak_flops=1e10)
    inputs = torch.zeros(4, 50, dtype=torch.long)
    targets = torch.full((4, 50), -1)
    targets[:, :10] = 1  # 40 supervised tokens per micro-batch
    module = _Module()
    _drive(cb, _StepTrainer(world_size=2), module, clock, micro_batches=4, accum=2, seconds_per_micro_batch=0.1,
           batch=(inputs, targets))
    # per step: 2 micro-batches x 200 tokens x 2 ranks in 0.2 s
    assert [(s, t) for s, t, _ in cb.history] == [(1, pytest.approx(4000.0)), (2, pytest.approx(4000.0))]
    assert cb.history[0][2] == pytest.approx(1e6 * 4000.0 / (1e10 * 2))
    assert cb.supervised_history == [pytest.approx(800.0)] * 2
    assert module.logged[-1]["perf/supervised_tok_per_s"] == pytest.approx(800.0)


def time_module():
    import nanochat.lit.callbacks as callbacks

    return callbacks.time


def test_throughput_mfu_in_a_real_trainer():
    """One history entry per optimizer step, logged as perf/* metrics."""
    import lightning as L

    class Net(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(1))

        def training_step(self, batch, i):
            return (self.w * batch).sum()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    class Data:
        def __iter__(self):
            while True:
                yield torch.ones(2)

    cb = ThroughputMFU(flops_per_token=10.0, tokens_per_step=64, peak_flops=1e9)
    trainer = L.Trainer(max_steps=3, callbacks=[cb], logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False)
    trainer.fit(Net(), train_dataloaders=Data())
    assert [s for s, _, _ in cb.history] == [1, 2, 3]
    assert all(tok_s > 0 and mfu == pytest.approx(10.0 * tok_s / 1e9) for _, tok_s, mfu in cb.history)
    assert float(trainer.callback_metrics["perf/tok_per_s"]) == pytest.approx(cb.history[-1][1])
