"""`python train.py stage=rl` end to end on a tiny "SFT" model that answers '#### d' with a guessed digit.

The fixture model is trained for a few seconds to answer in GSM8K's format with a digit from 0-3 it cannot
know, so about a quarter of its samples are right and most groups have something to learn.
"""
from __future__ import annotations

import json
import random
import subprocess

import pytest
import torch

from tests.helpers import ROOT, env_for, train_cmd

QUESTIONS = 40


def answers(seed: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randint(0, 3) for _ in range(QUESTIONS)]


def fixture_model(tok):
    """A 1-layer GPT fitted to '#### <digit>' answers (digits 0-3, unknowable from the question)."""
    from nanochat.chat import render_conversation
    from nanochat.gpt import GPT, GPTConfig

    torch.manual_seed(0)
    model = GPT.build(GPTConfig(sequence_len=64, vocab_size=tok.vocab_size, n_layer=1, n_head=2, n_kv_head=2,
                                n_embd=64))
    convs = [{"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"#### {d}"}]}
             for i, d in enumerate(answers(0)[:16])]
    data = [render_conversation(tok, c) for c in convs]
    width = max(len(ids) for ids, _ in data) - 1
    x = torch.full((len(data), width), tok.bos_token_id)
    y = torch.full((len(data), width), -1)
    for i, (ids, mask) in enumerate(data):
        x[i, : len(ids) - 1] = torch.tensor(ids[:-1])
        t = torch.tensor(ids[1:])
        t[torch.tensor(mask[1:]) == 0] = -1
        y[i, : len(ids) - 1] = t
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: one thread is fastest, and steadier on a busy machine
    try:
        for _ in range(60):
            loss = model(x, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    return model


@pytest.fixture(scope="module")
def rl_env(tmp_path_factory):
    """(root with outputs/sft/x/model, local GSM8K folder)."""
    from nanochat.checkpoint import export_model
    from nanochat.tokenizer import Tokenizer

    root = tmp_path_factory.mktemp("rl")
    tok = Tokenizer.byte_level()
    export_model(fixture_model(tok), tok, root / "outputs" / "sft" / "x" / "model", meta={"stage": "sft"})
    data = root / "gsm8k"
    data.mkdir()
    for split, seed in (("train", 0), ("test", 1)):
        rows = [{"question": f"q{i}", "answer": f"#### {d}"} for i, d in enumerate(answers(seed))]
        (data / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root, data


def rl_args(root, data, name: str, steps: int, **extra) -> list[str]:
    args = {"stage": "rl", "hardware": "cpu", "stage.gsm8k_path": str(data), "run_name": name,
            "stage.num_iterations": steps, "stage.examples_per_step": 2, "stage.num_samples": 4,
            "stage.max_new_tokens": 8, "stage.device_batch_size": 3, "stage.rollout_batch": 8,
            "stage.eval_every": 2, "stage.eval_examples": 4, "stage.eval_samples": 2, "stage.save_every": 1,
            "logger": "csv", "hydra.run.dir": str(root / "outputs" / "rl" / name)}
    args.update(extra)
    return [f"{k}={v}" for k, v in args.items()]


def env(root):
    e = env_for(root)
    e["NANOCHAT_OUTPUTS"] = str(root / "outputs")
    e["OMP_NUM_THREADS"] = "1"  # tiny matrices: threads only add scheduling noise
    return e


def test_tiny_rl_run_learns_and_reports_pass_at_1(rl_env):
    from nanochat.lit.loggers import read_metrics

    root, data = rl_env
    res = subprocess.run(train_cmd(rl_args(root, data, "tiny", 3)), cwd=ROOT, env=env(root), capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "pass@1" in res.stdout and "zero-advantage groups" in res.stdout
    run = root / "outputs" / "rl" / "tiny"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["stage"] == "rl" and summary["steps"] == 3 and summary["fit_seconds"] > 0
    assert 0.0 <= summary["pass@1"] <= summary["pass@2"] <= 1.0 and summary["eval_questions"] == 4
    assert [e["step"] for e in summary["evals"]] == [0, 2]
    assert summary["counts"]["samples"] == 3 * 2 * 4 and 0 < summary["reward_mean"] < 1
    assert summary["counts"]["trained_tokens"] > 0  # something was learnt
    meta = json.loads((run / "model" / "config.json").read_text())["meta"]
    assert meta["stage"] == "rl" and "pass@1" in meta
    for name in ("config.yaml", "tokenizer/tokenizer.pkl", "checkpoints/last.ckpt", "model/model.pt"):
        assert (run / name).exists(), name
    rows = read_metrics(run / "logs")
    assert sorted(r["step"] for r in rows if "train/reward" in r) == [0, 1, 2]
    assert sorted(r["step"] for r in rows if "eval/pass@1" in r) == [0, 2]
    a = torch.load(root / "outputs" / "sft" / "x" / "model" / "model.pt")
    b = torch.load(run / "model" / "model.pt")
    assert any(not torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow  # the message itself is checked in-process by tests/test_rl.py
def test_no_sft_model_is_one_line_naming_the_command(tmp_path, rl_env):
    _, data = rl_env
    e = env(tmp_path)
    res = subprocess.run(train_cmd(rl_args(tmp_path, data, "none", 1, plan_only="true")), cwd=ROOT, env=e,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode != 0
    lines = [ln for ln in res.stderr.strip().splitlines() if ln.strip()]
    assert lines[-1].startswith("error: ") and "`python train.py stage=sft`" in lines[-1]
    assert "Traceback" not in res.stderr


@pytest.mark.slow
def test_kill9_then_resume_gives_the_same_weights(rl_env):
    from tests.test_resume import kill_after_checkpoint

    root, data = rl_env
    steps = 6
    ref = subprocess.run(train_cmd(rl_args(root, data, "ref", steps)), cwd=ROOT, env=env(root),
                         capture_output=True, text=True, timeout=600)
    assert ref.returncode == 0, ref.stderr[-3000:]
    run = root / "outputs" / "rl" / "crash"
    kill_after_checkpoint(train_cmd(rl_args(root, data, "crash", steps)), env(root), run / "checkpoints",
                          random.Random().randint(2, steps - 2), run / "model" / "model.pt")
    resumed = subprocess.run(train_cmd(rl_args(root, data, "crash", steps, ckpt_path="last")), cwd=ROOT,
                             env=env(root), capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a = torch.load(root / "outputs" / "rl" / "ref" / "model" / "model.pt")
    b = torch.load(run / "model" / "model.pt")
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs after kill -9 and resume"
    sa = json.loads((root / "outputs" / "rl" / "ref" / "summary.json").read_text())
    sb = json.loads((run / "summary.json").read_text())
    assert sa["counts"] == sb["counts"] and sa["pass@1"] == sb["pass@1"]
    assert [e["pass@1"] for e in sa["evals"]] == [e["pass@1"] for e in sb["evals"]]
