"""Every small command's CLI as a user meets it (real subprocesses): `--help` lists the keys; a bad value,
an unknown key, a flag in the old style or a missing file is exactly one `error:` line on stderr and exit code 1,
and nothing is written."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

KEYS = {
    "nanochat.report": ("outputs", "out", "price_per_hour"),
    "nanochat.chat_cli": ("prompt", "ckpt", "temperature", "top_k", "max_tokens", "seed", "system", "device"),
    "nanochat.export": ("out", "ckpt", "hf", "dtype", "push_to_hub", "repo", "private"),
    "nanochat.lm_eval_bridge": ("tasks", "ckpt", "batch_size", "limit", "num_fewshot", "device", "add_bos",
                                "apply_chat_template", "include_path", "output_path", "log_samples", "seed"),
}
# (module, arguments, a word the error line must contain); {tmp}: a folder holding outputs/sft/ and FILE
BAD = [
    ("nanochat.report", ["price_per_hour=-1"], "price_per_hour"),
    ("nanochat.report", ["price_per_hour=cheap"], "price_per_hour"),
    ("nanochat.report", ["colour=red"], "colour"),
    ("nanochat.report", ["--outputs", "x"], "key=value"),
    ("nanochat.report", ["outputs={tmp}/missing"], "no outputs folder"),
    ("nanochat.report", ["outputs={tmp}/outputs", "out={tmp}/outputs"], "is a folder"),
    ("nanochat.chat_cli", ["temperature=-1"], "temperature"),
    ("nanochat.chat_cli", ["top_k=many"], "top_k"),
    ("nanochat.chat_cli", ["max_tokens=0"], "max_tokens"),
    ("nanochat.chat_cli", ["seed=1.5"], "seed"),
    ("nanochat.chat_cli", ["colour=red"], "colour"),
    ("nanochat.chat_cli", ["--ckpt", "x"], "key=value"),
    ("nanochat.chat_cli", ["ckpt={tmp}/no_model", "prompt=hi"], "no model at"),
    ("nanochat.chat_cli", ["ckpt=latest:nope"], "unknown stage"),
    ("nanochat.chat_cli", ["ckpt=latest:sft"], "no trained sft model"),
    ("nanochat.export", ["ckpt=latest:rl", "out={tmp}/x"], "no trained rl model"),
    ("nanochat.export", ["out={tmp}/x", "dtype=int3"], "dtype"),
    ("nanochat.export", ["ckpt={tmp}/nowhere", "out={tmp}/x"], "no model at"),
    ("nanochat.export", ["out={tmp}/x", "push_to_hub=true"], "repo="),
    ("nanochat.export", ["colour=red"], "colour"),
    ("nanochat.export", ["out={tmp}/x", "hf=maybe"], "hf"),
    ("nanochat.export", ["ckpt={tmp}/nowhere"], "out must be given"),
    ("nanochat.export", ["--out", "x"], "key=value"),
    ("nanochat.export", ["out={tmp}/FILE"], "is a file, not a folder"),
    ("nanochat.export", ["out={tmp}/outputs", "ckpt=latest:sft"], "holds no earlier export"),
    ("nanochat.lm_eval_bridge", ["colour=red"], "colour"),
    ("nanochat.lm_eval_bridge", ["batch_size=0", "tasks=x"], "batch_size"),
    ("nanochat.lm_eval_bridge", ["ckpt=x"], "tasks must be given"),
    ("nanochat.lm_eval_bridge", ["--tasks", "hellaswag"], "key=value"),
    ("nanochat.lm_eval_bridge", ["tasks=x", "ckpt={tmp}/no_model"], "no model at"),
    ("nanochat.lm_eval_bridge", ["tasks=x", "limit=-1"], "limit"),
    ("nanochat.lm_eval_bridge", ["tasks=x", "include_path={tmp}/no_dir"], "include_path"),
]


def run_module(module: str, *args: str, outputs=None) -> subprocess.CompletedProcess:
    env = {**os.environ, **({"NANOCHAT_OUTPUTS": str(outputs)} if outputs else {})}
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=120, env=env)


@pytest.mark.parametrize("module, args, says", BAD, ids=[f"{m.split('.')[1]}:{' '.join(a)}" for m, a, _ in BAD])
def test_bad_input_is_one_line(module, args, says, tmp_path):
    (tmp_path / "outputs" / "sft").mkdir(parents=True)
    (tmp_path / "FILE").write_text("keep me")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    r = run_module(module, *(a.format(tmp=tmp_path) for a in args), outputs=tmp_path / "outputs")
    assert r.returncode == 1 and r.stdout == "", r.stdout + r.stderr
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and says in lines[0], r.stderr
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # nothing written
    assert (tmp_path / "FILE").read_text() == "keep me"


@pytest.mark.parametrize("module", KEYS)
def test_help_lists_the_keys(module):
    r = run_module(module, "--help")
    assert r.returncode == 0 and r.stderr == "" and r.stdout.startswith(f"usage: python -m {module}")
    listed = [line.split()[0] for line in r.stdout.split("keys (type, default, doc):\n", 1)[1].splitlines()]
    assert listed == list(KEYS[module])
