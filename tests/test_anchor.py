"""The learning anchor: a seconds-long deterministic CPU run whose final train loss and val bpb are pinned.

Any change that alters training (model init, optimizer, schedule, data order, loss, evaluation) moves these
numbers, so it is seen at once. When a change is MEANT to alter training, regenerate the pins and paste them
below, saying why in the commit message:

    .venv/bin/python -m tests.test_anchor          # prints ANCHOR = {...} from a fresh run

The run: depth-2 model, byte-level tokenizer, a fixed generated corpus, 6 optimizer steps of 2 micro-batches,
fp32 on one CPU thread (so the thread count of the machine does not change the sums).
"""
from __future__ import annotations

import json
import random
import sys
import tempfile
from pathlib import Path

import pytest

ANCHOR = {"train_loss": 2.1354117393493652, "val_bpb": 2.8900201320648193}  # python -m tests.test_anchor
REL_TOL = 1e-4
STEPS = 6
WORDS = ("river stone light garden paper music winter doctor orange window market silver number yellow people "
         "little family school animal ocean forest letter travel summer mountain kitchen pencil morning").split()


def write_corpus(folder: Path) -> Path:
    """8 text files of pseudo-random words (Mersenne Twister floats only: identical on every Python 3)."""
    rng = random.Random(1234)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(8):
        words = [WORDS[int(rng.random() * len(WORDS))] for _ in range(60 + int(rng.random() * 200))]
        (folder / f"doc_{i}.txt").write_text(" ".join(words) + ".\n")
    return folder


def anchor_run(root: Path, **overrides) -> dict:
    """Train the anchor run under `root` (plus any config overrides); returns {"train_loss": the last step's
    loss, "val_bpb": the final val bpb}."""
    from nanochat.lit.loggers import read_metrics
    from nanochat.tokenizer import Tokenizer
    from tests.helpers import run_train

    corpus = write_corpus(root / "corpus")
    Tokenizer.byte_level().save(root / "tok")
    run = root / "outputs" / "anchor"
    args = {
        "stage": "base", "hardware": "cpu", "data": "local", "data.path": corpus, "data.val_fraction": 0.25,
        "data.loader.buffer_docs": 4, "tokenizer_dir": root / "tok", "run_name": "anchor", "seed": 42,
        "model.depth": 2, "model.sequence_len": 64, "hardware.device_batch_size": 4, "stage.total_batch_tokens": 512,
        "stage.num_iterations": STEPS, "hardware.num_threads": 1, "stage.eval_tokens": 1024,
        "stage.eval_every": STEPS, "stage.save_every": STEPS, "stage.sample_every": 0, "stage.sample_tokens": 1,
        "logger": "csv", "hydra.run.dir": run, **overrides,
    }
    proc = run_train([f"{k}={v}" for k, v in args.items()], root)
    if proc.returncode != 0:
        raise RuntimeError(f"anchor run failed:\n{proc.stderr[-3000:]}")
    losses = {r["step"]: r["train/loss"] for r in read_metrics(run / "logs") if "train/loss" in r}
    summary = json.loads((run / "summary.json").read_text())
    assert sorted(losses) == list(range(STEPS)) and summary["steps"] == STEPS
    return {"train_loss": losses[STEPS - 1], "val_bpb": summary["val_bpb"]}


def test_learning_anchor(tmp_path):
    got = anchor_run(tmp_path)
    assert None not in ANCHOR.values(), f"no pinned values yet; pin these: ANCHOR = {got}"
    for key, pinned in ANCHOR.items():
        assert got[key] == pytest.approx(pinned, rel=REL_TOL), (
            f"{key} moved: {got[key]!r} vs pinned {pinned!r}. If training was meant to change, regenerate the pins "
            f"(python -m tests.test_anchor) and say why in the commit.")


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as d:
        values = anchor_run(Path(d))
    print(f"ANCHOR = {{\"train_loss\": {values['train_loss']!r}, \"val_bpb\": {values['val_bpb']!r}}}")
    sys.exit(0)
