"""Shared test utilities: tiny corpora, tiny tokenizers, running train.py in a subprocess."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

WORDS = ("the quick brown fox jumps over a lazy dog while seven wizards quietly judge boxing matches "
         "in the old town of Prague where rivers bend and bridges carry people home at night").split()


def write_text_corpus(folder: Path, n_files: int = 6, docs_per_file: int = 1, words: int = 400, seed: int = 0) -> Path:
    """A folder of .txt files (one document each) of pseudo-random English-like text."""
    import random

    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n_files):
        text = " ".join(rng.choice(WORDS) for _ in range(words)) + ".\n"
        (folder / f"doc_{i:03d}.txt").write_text(text)
    return folder


def tiny_train_overrides(run_name: str, corpus: Path, tokenizer_dir: Path, steps: int = 8, **extra) -> list[str]:
    """Overrides for a seconds-long CPU base run of a depth-2 model."""
    args = {
        "stage": "base", "hardware": "cpu", "data": "local", "data.path": str(corpus), "data.val_fraction": 0.34,
        "tokenizer_dir": str(tokenizer_dir), "run_name": run_name, "model.depth": 2, "model.sequence_len": 64,
        "hardware.device_batch_size": 4, "stage.total_batch_tokens": 512, "stage.num_iterations": steps,
        "stage.save_every": 1, "stage.eval_every": 100, "stage.eval_tokens": 512,
        "stage.sample_every": 0, "stage.sample_tokens": 2, "logger": "none",
        "hydra.run.dir": str(corpus.parent / "outputs" / run_name),
    }
    args.update(extra)
    return [f"{k}={v}" for k, v in args.items()]


def train_cmd(overrides: list[str]) -> list[str]:
    return [sys.executable, str(ROOT / "train.py"), *overrides]


def env_for(base_dir: Path) -> dict:
    env = dict(os.environ)
    env["NANOCHAT_BASE_DIR"] = str(base_dir)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_train(overrides: list[str], base_dir: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(train_cmd(overrides), capture_output=True, text=True, cwd=ROOT, env=env_for(base_dir),
                          timeout=timeout)
