"""NanochatDataModule in a real (tiny) Lightning fit: checkpoint, resume with ckpt_path, identical data."""
from __future__ import annotations

import warnings

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from nanochat.common import NanochatError
from nanochat.lit.datamodule import NanochatDataModule
from tests.test_dataloader import TOK, write_corpus

B, T = 2, 16


class Recorder(L.LightningModule):
    """Trivial model that remembers every training batch it is given."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.seen: list[torch.Tensor] = []
        self.val_seen = 0

    def training_step(self, batch, batch_idx):
        inputs, targets = batch
        self.seen.append(torch.cat([inputs, targets[:, -1:]], dim=1).clone())
        return (self.w * inputs.float().mean() - 1).pow(2)

    def validation_step(self, batch, batch_idx):
        self.val_seen += 1

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dm_corpus")
    write_corpus(folder)
    return folder


def datamodule(corpus, **kw):
    return NanochatDataModule("local", {"path": str(corpus), "val_file": "zz_val.parquet"}, tokenizer=TOK,
                              batch_size=B, seq_len=T, buffer_docs=4, tokenizer_threads=1, prefetch=2, **kw)


def fit(corpus, root, max_steps, ckpt_path=None, every=None, accumulate=1, val_every=None):
    model = Recorder()
    dm = datamodule(corpus, val_steps=2)
    callbacks = []
    if every:
        callbacks.append(ModelCheckpoint(dirpath=root, every_n_train_steps=every, save_last=True, save_top_k=-1))
    trainer = L.Trainer(max_steps=max_steps, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=callbacks, enable_checkpointing=bool(every),
                        accumulate_grad_batches=accumulate, val_check_interval=val_every,
                        check_val_every_n_epoch=None, limit_val_batches=None if val_every else 0,
                        num_sanity_val_steps=0, default_root_dir=root)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(model, datamodule=dm, ckpt_path=ckpt_path)
    return model, dm


@pytest.mark.parametrize("accumulate,val_every", [(1, None), (2, 3)])
def test_resume_sees_exactly_the_same_batches(corpus, tmp_path, accumulate, val_every):
    total, stop = 9, 4
    full, _ = fit(corpus, tmp_path / "full", total, accumulate=accumulate, val_every=val_every)
    assert len(full.seen) == total * accumulate
    first, dm1 = fit(corpus, tmp_path / "run", stop, every=stop, accumulate=accumulate, val_every=val_every)
    ckpt = tmp_path / "run" / "last.ckpt"
    assert ckpt.exists()
    state = torch.load(ckpt, weights_only=False)["NanochatDataModule"]
    assert state["cursors"]["0"]["batches"] == stop * accumulate  # consumed, not merely prefetched
    second, _ = fit(corpus, tmp_path / "run", total, ckpt_path=str(ckpt), accumulate=accumulate,
                    val_every=val_every)
    resumed = first.seen + second.seen
    assert len(resumed) == len(full.seen)
    for a, b in zip(resumed, full.seen):
        assert torch.equal(a, b)
    if val_every:
        assert full.val_seen == 2 * (total * accumulate // val_every)  # val_steps=2 per validation run


def test_without_trainer(corpus):
    dm = datamodule(corpus)
    dm.setup("fit")
    loader = dm.train_dataloader()
    it = iter(loader)
    batches = [next(it) for _ in range(3)]
    it.close()
    state = dm.state_dict()
    assert state["world_size"] == 1 and state["cursors"]["0"]["batches"] == 3
    dm2 = datamodule(corpus)
    dm2.load_state_dict(state)
    nxt = next(iter(dm2.train_dataloader()))
    ref = datamodule(corpus).train_dataloader()
    ref_batches = []
    it = iter(ref)
    for _ in range(4):
        ref_batches.append(next(it))
    it.close()
    assert torch.equal(nxt[0], ref_batches[3][0]) and torch.equal(batches[0][0], ref_batches[0][0])
    val = dm.val_dataloader()
    assert len(list(val)) > 0
    assert all(inputs.shape == (B, T) for inputs, _ in val)


def test_world_size_mismatch_is_clear(corpus):
    dm = datamodule(corpus)
    dm.load_state_dict({"world_size": 2, "cursors": {"0": {}, "1": {}}})
    with pytest.raises(NanochatError, match="world size 2"):
        dm.train_dataloader()


DDP_SCRIPT = r'''
import sys, warnings
import lightning as L, torch
from lightning.pytorch.callbacks import ModelCheckpoint
sys.path.insert(0, sys.argv[1])
from tests.test_datamodule import Recorder, datamodule
corpus, root, max_steps, ckpt, out = sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5], sys.argv[6]
model, dm = Recorder(), datamodule(__import__("pathlib").Path(corpus), val_steps=1)
cbs = [ModelCheckpoint(dirpath=root, every_n_train_steps=max_steps, save_last=True)] if ckpt == "save" else []
trainer = L.Trainer(max_steps=max_steps, accelerator="cpu", devices=2, strategy="ddp", logger=False,
                    enable_progress_bar=False, enable_model_summary=False, callbacks=cbs,
                    enable_checkpointing=bool(cbs), limit_val_batches=0, num_sanity_val_steps=0,
                    default_root_dir=root)
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    trainer.fit(model, datamodule=dm, ckpt_path=None if ckpt in ("none", "save") else ckpt)
torch.save(model.seen, f"{out}.rank{trainer.global_rank}.pt")
'''


@pytest.mark.slow
def test_ddp_two_ranks_resume(corpus, tmp_path):
    """Two CPU processes (gloo, ~30 s): the checkpoint holds both ranks' cursors and each rank resumes exactly."""
    import os
    import subprocess
    import sys

    from tests.test_dataloader import ROOT_DIR

    script = tmp_path / "ddp_fit.py"
    script.write_text(DDP_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(ROOT_DIR), "MASTER_ADDR": "127.0.0.1"}

    def run(root, steps, ckpt, out):
        proc = subprocess.run([sys.executable, str(script), str(ROOT_DIR), str(corpus), str(root), str(steps), ckpt,
                               str(out)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
        assert proc.returncode == 0, proc.stderr[-3000:]

    run(tmp_path / "full", 6, "none", tmp_path / "full")
    run(tmp_path / "run", 3, "save", tmp_path / "first")
    state = torch.load(tmp_path / "run" / "last.ckpt", weights_only=False)["NanochatDataModule"]
    assert state["world_size"] == 2 and sorted(state["cursors"]) == ["0", "1"]
    assert [state["cursors"][r]["rank"] for r in ("0", "1")] == [0, 1]
    run(tmp_path / "run", 6, str(tmp_path / "run" / "last.ckpt"), tmp_path / "second")
    for rank in (0, 1):
        full = torch.load(tmp_path / f"full.rank{rank}.pt")
        resumed = torch.load(tmp_path / f"first.rank{rank}.pt") + torch.load(tmp_path / f"second.rank{rank}.pt")
        assert len(full) == len(resumed) == 6
        assert all(torch.equal(a, b) for a, b in zip(full, resumed))
    assert not torch.equal(torch.load(tmp_path / "full.rank0.pt")[0], torch.load(tmp_path / "full.rank1.pt")[0])


def test_val_tokens_sets_steps(corpus):
    dm = datamodule(corpus, val_tokens=5 * B * T)
    assert len(dm.val_dataloader()) == 5 and len(list(dm.val_dataloader())) == 5
