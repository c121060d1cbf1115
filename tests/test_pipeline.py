"""stage=all end to end on CPU with the tiniest settings: killed during a middle stage, run again, it finishes
without redoing the completed stages, and the report card is complete."""
import json
import os
import signal
import subprocess
import time

import pytest

from tests.helpers import ROOT, env_for, train_cmd, write_text_corpus

MIXTURE = """
seed: 1
train:
  - {task: identity, size: 16}
  - {task: arithmetic, size: 24, split: train}
val:
  - {task: arithmetic, size: 4, split: test}
"""


def pipeline_args(tmp_path):
    mix = tmp_path / "mix.yaml"
    mix.write_text(MIXTURE)
    corpus = write_text_corpus(tmp_path / "corpus", n_files=4, words=600)
    args = {
        "stage": "all", "hardware": "cpu", "data": "local", "data.path": corpus, "data.val_fraction": 0.25,
        "model.depth": 1, "model.sequence_len": 64, "hardware.device_batch_size": 4, "logger": "csv",
        "data.tokenizer.vocab_size": 300, "data.tokenizer.max_chars": 50000,
        "pipeline.base.total_batch_tokens": 256, "pipeline.base.num_iterations": 3, "pipeline.base.eval_tokens": 256,
        "pipeline.base.save_every": 1, "pipeline.mid.total_batch_tokens": 256, "pipeline.mid.eval_tokens": 256,
        "pipeline.mid.mixture": mix, "pipeline.mid.num_iterations": 6,
        "pipeline.mid.save_every": 1, "pipeline.mid.eval_every": -1,
        "pipeline.sft.mixture": mix, "pipeline.sft.num_iterations": 2,
        "pipeline.sft.examples_per_step": 4,
        "stage.eval.max_per_task": 2, "stage.eval.max_new_tokens": 4,
        "stage.eval.evals": "[bpb,spellingbee]", "hydra.run.dir": tmp_path / "all",
    }
    return [f"{k}={v}" for k, v in args.items()]


@pytest.mark.slow
def test_pipeline_killed_mid_stage_then_resumed(tmp_path):
    env = env_for(tmp_path)
    env["NANOCHAT_OUTPUTS"] = str(tmp_path / "outputs")
    out = tmp_path / "outputs"
    cmd = train_cmd(pipeline_args(tmp_path))
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 400
    mid_ckpts = out / "mid" / "d1" / "checkpoints"
    while time.time() < deadline and proc.poll() is None and not list(mid_ckpts.glob("step*.ckpt")):
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the pipeline and the stage process it runs
    proc.wait()
    assert list(mid_ckpts.glob("*.ckpt")), "mid-training never wrote a checkpoint before the kill"
    assert not (out / "mid" / "d1" / "summary.json").exists(), "the run finished before it was killed"
    done_before = {s: (out / s / "d1" / "summary.json").stat().st_mtime_ns for s in ("tokenizer", "base")}

    second = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "tokenizer: done" in second.stdout and "base: done" in second.stdout
    assert "mid (resuming)" in second.stdout
    for stage, mtime in done_before.items():  # completed stages were not redone
        assert (out / stage / "d1" / "summary.json").stat().st_mtime_ns == mtime
    mid = json.loads((out / "mid" / "d1" / "summary.json").read_text())
    assert mid["steps"] == 6
    for stage in ("base", "mid", "sft"):
        assert (out / stage / "d1" / "model" / "model.pt").exists()
        assert (out / stage / "d1" / "eval.json").exists()
    report = (out / "report.md").read_text()
    for section in ("## Environment", "## Tokenizer", "## BASE", "## MID", "## SFT"):
        assert section in report, section
    third = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert third.returncode == 0 and "sft: done" in third.stdout  # a finished pipeline redoes nothing


def test_unknown_stage_in_pipeline_is_one_clear_line(tmp_path):
    env = env_for(tmp_path)
    env["NANOCHAT_OUTPUTS"] = str(tmp_path / "outputs")
    proc = subprocess.run(train_cmd(["stage=all", "hardware=cpu", "pipeline.stages=[tokenizer,nope]",
                                     f"hydra.run.dir={tmp_path / 'all'}"]), cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error:") and "nope" in last


def test_sft2026_in_the_pipeline_continues_from_base():
    """The chat stages chain from the stage their mixture starts from: sft2026 skips mid's model even when mid ran."""
    from nanochat.config.app import compose
    from nanochat.stages.pipeline import input_stage

    chain = ["tokenizer", "base", "mid", "sft", "rl"]
    for overrides, sft_input in (([], "mid"), (["pipeline.sft.mixture=sft2026"], "base")):
        cfg = compose("train", ["stage=all", *overrides])
        inputs = [input_stage(cfg, s, chain[:i]) for i, s in enumerate(chain)]
        assert inputs == [None, None, "base", sft_input, "sft"]
    cfg = compose("train", ["stage=all", "pipeline.sft.mixture=sft2026"])
    assert input_stage(cfg, "sft", ["tokenizer", "base"]) == "base"
