"""kill -9 during training, resume with ckpt_path=last: final weights equal an uninterrupted run's, bit for bit."""
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from tests.helpers import ROOT, env_for, run_train, tiny_train_overrides, train_cmd


def _weights(run_dir: Path) -> dict:
    return torch.load(run_dir / "model" / "model.pt", map_location="cpu")


def test_kill9_then_resume_is_bit_exact(tiny_env):
    root, corpus, tok_dir = tiny_env
    steps = 12
    ref = run_train(tiny_train_overrides("ref", corpus, tok_dir, steps), root)
    assert ref.returncode == 0, ref.stderr[-3000:]

    # interrupted run: SIGKILL as soon as a checkpoint of a random step (or later) has landed
    kill_after = random.Random().randint(1, steps - 4)
    ckpt_dir = root / "outputs" / "crash" / "checkpoints"
    proc = subprocess.Popen(train_cmd(tiny_train_overrides("crash", corpus, tok_dir, steps)), cwd=ROOT,
                            env=env_for(root), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240

    def latest_step() -> int:  # only the newest step file is kept, so look at whichever exists
        steps_saved = [int(p.stem[4:]) for p in ckpt_dir.glob("step*.ckpt")] if ckpt_dir.exists() else []
        return max(steps_saved, default=0)

    while latest_step() < kill_after and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (root / "outputs" / "crash" / "model" / "model.pt").exists(), "run finished before it was killed"
    assert list(ckpt_dir.glob("*.ckpt"))  # last.ckpt, or only the step file when killed between the two writes

    resumed = run_train(tiny_train_overrides("crash", corpus, tok_dir, steps, ckpt_path="last"), root)
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    a, b = _weights(root / "outputs" / "ref"), _weights(root / "outputs" / "crash")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs after resume (killed after step {kill_after})"


def test_fresh_run_refuses_to_overwrite_checkpoints(tiny_env):
    root, corpus, tok_dir = tiny_env
    ckpt = root / "outputs" / "guarded" / "checkpoints"
    ckpt.mkdir(parents=True)
    (ckpt / "last.ckpt").write_bytes(b"precious")
    proc = run_train(tiny_train_overrides("guarded", corpus, tok_dir, 2), root)
    assert proc.returncode == 1
    assert "ckpt_path=last" in proc.stderr.strip().splitlines()[-1]
    assert (ckpt / "last.ckpt").read_bytes() == b"precious"


def test_corrupt_checkpoint_is_one_clear_line(tiny_env):
    root, corpus, tok_dir = tiny_env
    ckpt = root / "outputs" / "corrupt" / "checkpoints"
    ckpt.mkdir(parents=True)
    (ckpt / "last.ckpt").write_bytes(b"not a checkpoint")
    proc = run_train(tiny_train_overrides("corrupt", corpus, tok_dir, 2, ckpt_path="last"), root)
    assert proc.returncode == 1
    assert "corrupt" in proc.stderr.strip().splitlines()[-1]
    assert (ckpt / "last.ckpt").read_bytes() == b"not a checkpoint"


def test_missing_tokenizer_is_one_clear_line(tiny_env, tmp_path):
    root, corpus, _ = tiny_env
    proc = run_train(tiny_train_overrides("notok", corpus, tmp_path / "nothing", 2), root)
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
