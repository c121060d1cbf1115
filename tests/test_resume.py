"""kill -9 during training, then `ckpt_path=last`: the resumed run continues the interrupted one exactly.

The corpus is many distinct random documents (byte-level tokenizer), so every micro-batch differs and a resume
that restarted the data or the weights would show. An optimizer-step counter injected into the resumed process
(a `sitecustomize` on PYTHONPATH with torch's global optimizer hook) proves it ran only the remaining steps.
"""
import json
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from tests.helpers import ROOT, env_for, run_train, tiny_train_overrides, train_cmd

STEPS = 10
STEP_COUNTER = '''\
import os

from torch.optim.optimizer import register_optimizer_step_post_hook


def _count_step(optimizer, args, kwargs):
    with open(os.environ["NANOCHAT_TEST_STEP_LOG"], "a") as f:
        f.write("1\\n")

register_optimizer_step_post_hook(_count_step)
'''


def write_parquet_corpus(folder: Path, n_files: int, docs_per_group: int, groups: int, doc_len, seed: int) -> Path:
    """Parquet shards of distinct random documents; doc_len(rng) gives each document's length in characters."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = random.Random(seed)
    alphabet = "abcdefghijklmnopqrstuvwxyz      .,0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    folder.mkdir(parents=True)
    for i in range(n_files):
        docs = ["".join(rng.choice(alphabet) for _ in range(doc_len(rng))) for _ in range(docs_per_group * groups)]
        pq.write_table(pa.table({"text": docs}), folder / f"shard_{i:03d}.parquet", row_group_size=docs_per_group)
    return folder


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    from nanochat.tokenizer import Tokenizer

    path = tmp_path_factory.mktemp("tok")
    Tokenizer.byte_level().save(path)
    return path


CORPORA = {
    # documents of 10-250 bytes packed the preset's way: steps cross shard boundaries mid-row
    "packed": dict(n_files=8, docs_per_group=6, groups=2, doc_len=lambda r: r.randint(10, 250),
                   extra={"data.loader.buffer_docs": 8, "data.val_fraction": 0.125}),
    # one row = one 64-byte document (cropfit packing: whole BOS-aligned documents), one shard = one optimizer
    # step (2 micro-batches x 4 rows): every checkpoint's data cursor sits exactly on a shard boundary
    "shard_boundary": dict(n_files=STEPS + 3, docs_per_group=4, groups=2, doc_len=lambda r: 64,
                           extra={"data.loader.buffer_docs": 1, "data.loader.packing": "cropfit",
                                  "data.val_fraction": 1 / (STEPS + 3)}),
}


def newest_checkpoint(ckpt_dir: Path) -> Path:
    """The file `ckpt_path=last` resumes from (the most recently written one)."""
    return max(ckpt_dir.glob("*.ckpt"), key=lambda p: p.stat().st_mtime_ns)


def losses(run_dir: Path) -> dict[int, float]:
    from nanochat.lit.loggers import read_metrics

    rows = [r for r in read_metrics(run_dir / "logs") if "train/loss" in r]
    steps = [r["step"] for r in rows]
    assert len(steps) == len(set(steps)), f"a step is logged twice: {sorted(steps)}"
    return {r["step"]: r["train/loss"] for r in rows}


def cursor(ckpt: Path) -> dict:
    return torch.load(ckpt, map_location="cpu", weights_only=False)["NanochatDataModule"]["cursors"]["0"]


def kill_after_checkpoint(cmd: list[str], env: dict, ckpt_dir: Path, step: int, done: Path) -> None:
    """Start a run and SIGKILL it as soon as a checkpoint of `step` (or later) has landed."""
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240

    def latest() -> int:  # only the newest step file is kept, so look at whichever exists
        return max((int(p.stem[4:]) for p in ckpt_dir.glob("step*.ckpt")), default=0) if ckpt_dir.exists() else 0

    while latest() < step and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not done.exists(), "the run finished before it was killed"


@pytest.mark.parametrize("corpus_name", sorted(CORPORA))
def test_kill9_then_resume_continues_exactly(tmp_path, tok_dir, corpus_name):
    spec = CORPORA[corpus_name]
    corpus = write_parquet_corpus(tmp_path / "corpus", spec["n_files"], spec["docs_per_group"], spec["groups"],
                                  spec["doc_len"], seed=1)
    extra = {"logger": "csv", **spec["extra"]}

    def args(name, **more):
        return tiny_train_overrides(name, corpus, tok_dir, STEPS, **extra, **more)

    ref = run_train(args("ref"), tmp_path)
    assert ref.returncode == 0, ref.stderr[-3000:]
    ref_dir, run = tmp_path / "outputs" / "ref", tmp_path / "outputs" / "crash"
    ref_losses = losses(ref_dir)
    assert sorted(ref_losses) == list(range(STEPS))
    assert len({round(v, 3) for v in ref_losses.values()}) == STEPS  # varied batches: no two steps alike

    kill_after_checkpoint(train_cmd(args("crash")), env_for(tmp_path), run / "checkpoints",
                          random.Random().randint(2, STEPS - 3), run / "model" / "model.pt")
    resume_from = newest_checkpoint(run / "checkpoints")
    saved = torch.load(resume_from, map_location="cpu", weights_only=False)
    start = saved["global_step"]
    assert 2 <= start < STEPS
    saved_cursor = saved["NanochatDataModule"]["cursors"]["0"]
    assert saved_cursor["batches"] == 2 * start  # 2 micro-batches per optimizer step, consumed not prefetched
    if corpus_name == "shard_boundary":
        assert (saved_cursor["file_index"], saved_cursor["row_group_index"], saved_cursor["doc_offset"]) == (start, 0, 0)

    # resume, counting the optimizer steps the resumed process takes
    hook_dir = tmp_path / "hook"
    hook_dir.mkdir()
    (hook_dir / "sitecustomize.py").write_text(STEP_COUNTER)
    env = env_for(tmp_path)
    env["PYTHONPATH"] = f"{hook_dir}:{env['PYTHONPATH']}" if env.get("PYTHONPATH") else str(hook_dir)
    env["NANOCHAT_TEST_STEP_LOG"] = str(tmp_path / "steps.log")
    resumed = subprocess.run(train_cmd(args("crash", ckpt_path="last")), cwd=ROOT, env=env, capture_output=True,
                             text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    ran = len((tmp_path / "steps.log").read_text().split())
    assert ran == STEPS - start, f"resumed at step {start} but ran {ran} optimizer steps (expected {STEPS - start})"

    # the steps after the resume point saw the same batches and weights as the uninterrupted run
    got = losses(run)
    assert set(range(start, STEPS)) <= set(got), f"steps {start}..{STEPS - 1} missing from {sorted(got)}"
    for step, loss in got.items():
        assert loss == ref_losses[step], f"step {step}: loss {loss} != {ref_losses[step]} (resumed at {start})"
    a, b = torch.load(ref_dir / "model" / "model.pt"), torch.load(run / "model" / "model.pt")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs after resuming at step {start}"
    assert cursor(ref_dir / "checkpoints" / "last.ckpt") == cursor(run / "checkpoints" / "last.ckpt")
    if corpus_name == "packed":  # the resumed segment read past at least one shard boundary
        assert cursor(run / "checkpoints" / "last.ckpt")["file_index"] != saved_cursor["file_index"] or \
            cursor(run / "checkpoints" / "last.ckpt")["epoch"] != saved_cursor["epoch"]


@pytest.mark.slow
def test_two_ranks_take_the_planned_micro_batches_per_step(tmp_path, tok_dir):
    """DDP (gloo) on CPU through train.py: the printed plan's accumulation is what each rank really does."""
    import re

    corpus = write_parquet_corpus(tmp_path / "corpus", 6, 8, 2, lambda r: r.randint(20, 200), seed=2)
    steps = 4
    args = tiny_train_overrides("ddp", corpus, tok_dir, steps, **{
        "hardware.devices": 2, "hardware.strategy": "ddp", "stage.total_batch_tokens": 1024,
        "data.val_fraction": 0.2})
    proc = run_train(args, tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = re.search(r"(\d+) accumulation", proc.stdout)
    assert m, proc.stdout[-2000:]
    accum = int(m.group(1))
    assert accum == 1024 // (4 * 64 * 2)  # total tokens / (device batch x seq x ranks)
    out = tmp_path / "outputs" / "ddp"
    assert json.loads((out / "summary.json").read_text())["steps"] == steps
    state = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert state["global_step"] == steps
    cursors = state["NanochatDataModule"]["cursors"]
    assert sorted(cursors) == ["0", "1"]
    for rank, c in cursors.items():
        assert c["batches"] == steps * accum, f"rank {rank} consumed {c['batches']} micro-batches"


def test_fresh_run_refuses_to_overwrite_checkpoints(tmp_path, tok_dir):
    corpus = write_parquet_corpus(tmp_path / "corpus", 3, 4, 1, lambda r: 50, seed=0)
    ckpt = tmp_path / "outputs" / "guarded" / "checkpoints"
    ckpt.mkdir(parents=True)
    (ckpt / "last.ckpt").write_bytes(b"precious")
    proc = run_train(tiny_train_overrides("guarded", corpus, tok_dir, 2), tmp_path)
    assert proc.returncode == 1
    assert "ckpt_path=last" in proc.stderr.strip().splitlines()[-1]
    assert (ckpt / "last.ckpt").read_bytes() == b"precious"


def test_corrupt_checkpoint_is_one_clear_line(tmp_path, tok_dir):
    corpus = write_parquet_corpus(tmp_path / "corpus", 3, 4, 1, lambda r: 50, seed=0)
    ckpt = tmp_path / "outputs" / "corrupt" / "checkpoints"
    ckpt.mkdir(parents=True)
    (ckpt / "last.ckpt").write_bytes(b"not a checkpoint")
    proc = run_train(tiny_train_overrides("corrupt", corpus, tok_dir, 2, ckpt_path="last"), tmp_path)
    assert proc.returncode == 1
    assert "corrupt" in proc.stderr.strip().splitlines()[-1]
    assert (ckpt / "last.ckpt").read_bytes() == b"not a checkpoint"


def test_missing_tokenizer_is_one_clear_line(tmp_path):
    corpus = write_parquet_corpus(tmp_path / "corpus", 3, 4, 1, lambda r: 50, seed=0)
    proc = run_train(tiny_train_overrides("notok", corpus, tmp_path / "nothing", 2), tmp_path)
    assert proc.returncode == 1
    assert "tokenizer" in proc.stderr.strip().splitlines()[-1]


def test_ckpt_path_last_takes_the_newest_complete_checkpoint(tmp_path):
    """Killed between writing step<N>.ckpt and its copy last.ckpt: resume from the step file."""
    import os

    from omegaconf import OmegaConf

    from nanochat.common import NanochatError
    from nanochat.lit.runner import resolve_ckpt_path

    cfg = OmegaConf.create({"ckpt_path": "last"})
    with pytest.raises(NanochatError, match="no checkpoint"):
        resolve_ckpt_path(cfg, tmp_path)
    (tmp_path / "step000001.ckpt").write_bytes(b"1")
    assert resolve_ckpt_path(cfg, tmp_path).endswith("step000001.ckpt")
    (tmp_path / "last.ckpt").write_bytes(b"1")
    os.utime(tmp_path / "last.ckpt", ns=(2_000_000_000, 2_000_000_000))
    (tmp_path / "step000002.ckpt").write_bytes(b"2")
    os.utime(tmp_path / "step000002.ckpt", ns=(3_000_000_000, 3_000_000_000))
    os.utime(tmp_path / "step000001.ckpt", ns=(1_000_000_000, 1_000_000_000))
    assert resolve_ckpt_path(cfg, tmp_path).endswith("step000002.ckpt")
