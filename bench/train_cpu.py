"""Training throughput, MFU and a learning check on hardware=cpu, through the real `train.py` path.

For each depth: a fixed number of optimizer steps on the embedded sample; prints tok/s (median over steps after
the first), MFU against the profile's peak_flops, and the final validation bits per byte. The token count is
what the run really consumed (micro-batches in its data cursor x device batch x context), so it stays right
when the batch is overridden. The defaults reproduce the rows of docs/benchmarks.md (d4: 60 steps, d8: 12).
Needs the sample tokenizer (`python train.py stage=tokenizer`); trains it first when missing.

    python bench/train_cpu.py [--depths 4 8] [--steps 60 12] [--extra hardware.precision=bf16-mixed ...]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parent.parent


def run(args: list[str]) -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), *args], cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"train.py {' '.join(args)} failed:\n{proc.stderr[-2000:]}")


def ensure_tokenizer() -> None:
    from nanochat.tokenizer import default_tokenizer_dir

    if not (default_tokenizer_dir() / "tokenizer.pkl").exists():
        run(["stage=tokenizer"])


def train_run(name: str, out: Path, overrides: list[str]) -> dict:
    """One `train.py` run (hardware=cpu, no logger, no samples) into out/name; its summary plus the real token
    count: {"tok_per_s", "mfu", "val_bpb", "fit_seconds", "steps", "tokens", "batch_tokens"}."""
    run_dir = out / name
    run(["hardware=cpu", "logger=none", f"run_name={name}", f"hydra.run.dir={run_dir}", "stage.sample_every=0",
         *overrides])
    s = json.loads((run_dir / "summary.json").read_text())
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    micro_batches = sum(c["batches"] for c in state["NanochatDataModule"]["cursors"].values())
    tokens = micro_batches * int(cfg["hardware"]["device_batch_size"]) * int(cfg["model"]["sequence_len"])
    return {**s, "tokens": tokens, "batch_tokens": tokens // max(1, int(s["steps"]))}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--depths", type=int, nargs="+", default=[4, 8])
    ap.add_argument("--steps", type=int, nargs="+", default=[60, 12], help="one per depth, or one for all")
    ap.add_argument("--extra", nargs="*", default=[], help="more overrides, e.g. hardware.precision=bf16-mixed")
    args = ap.parse_args()
    steps = args.steps * len(args.depths) if len(args.steps) == 1 else args.steps
    if len(steps) != len(args.depths):
        sys.exit("--steps: give one value, or one per depth")
    ensure_tokenizer()
    out = Path(tempfile.mkdtemp(prefix="nanochat-bench-"))
    for depth, n in zip(args.depths, steps):
        s = train_run(f"bench_d{depth}", out, [f"model.depth={depth}", f"stage.num_iterations={n}",
                                               f"stage.eval_every={n}", *args.extra])
        print(f"train_cpu d{depth}: {s['tok_per_s']:,.0f} tok/s, MFU {100 * s['mfu']:.1f}%, val bpb {s['val_bpb']:.4f} "
              f"after {s['tokens']:,} tokens ({s['steps']} steps x {s['batch_tokens']:,}; {s['fit_seconds']:.0f} s)")


if __name__ == "__main__":
    main()
