"""Training throughput, MFU and a learning check on hardware=cpu, through the real `train.py` path.

For each depth: a fixed number of optimizer steps on the embedded sample; prints tok/s, MFU (against the
profile's peak_flops) and the final validation bits per byte, so regressions in speed or learning show.
Needs the sample tokenizer (`python train.py stage=tokenizer`); trains it first when missing.

    python bench/train_cpu.py [--depths 4 8] [--steps 60]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run(args: list[str]) -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), *args], cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"train.py {' '.join(args)} failed:\n{proc.stderr[-2000:]}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--depths", type=int, nargs="+", default=[4, 8])
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--extra", nargs="*", default=[], help="more overrides, e.g. hardware.precision=bf16-mixed")
    args = ap.parse_args()
    from nanochat.tokenizer import default_tokenizer_dir

    if not (default_tokenizer_dir() / "tokenizer.pkl").exists():
        run(["stage=tokenizer"])
    out = Path(tempfile.mkdtemp(prefix="nanochat-bench-"))
    for depth in args.depths:
        name = f"bench_d{depth}"
        run(["hardware=cpu", f"model.depth={depth}", f"hardware.num_iterations={args.steps}", "logger=none",
             f"run_name={name}", f"hydra.run.dir={out / name}", "stage.sample_every=0",
             f"stage.eval_every={args.steps}", *args.extra])
        s = json.loads((out / name / "summary.json").read_text())
        tokens = args.steps * 8192
        print(f"train_cpu d{depth}: {s['tok_per_s']:,.0f} tok/s, MFU {100 * s['mfu']:.1f}%, "
              f"val bpb {s['val_bpb']:.4f} after {tokens:,} tokens ({s['fit_seconds']:.0f} s)")


if __name__ == "__main__":
    main()
