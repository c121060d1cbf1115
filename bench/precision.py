"""Precision and compile on this CPU: speed AND the quality it costs, through the real `train.py` path.

Three runs of the same d4 model at context 512 on the same tokens (same steps, batch, data and seed):
bf16-mixed + torch.compile, fp32 + torch.compile, fp32 eager (the cpu profile's default). Prints the median
tok/s (after the first step, so compile warm-up is excluded; the wall time including it is printed too) and
the final validation bits per byte of each, then the speed-ups over fp32 eager and the bpb differences.

    python bench/precision.py [--depth 4] [--seq-len 512] [--steps 16]
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from train_cpu import ensure_tokenizer, train_run

CONFIGS = {
    "bf16-mixed+compile": ["hardware.precision=bf16-mixed", "hardware.compile=true"],
    "fp32+compile": ["hardware.precision=32-true", "hardware.compile=true"],
    "fp32 eager": ["hardware.precision=32-true", "hardware.compile=false"],
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--eval-tokens", type=int, default=32768)
    args = ap.parse_args()
    ensure_tokenizer()
    out = Path(tempfile.mkdtemp(prefix="nanochat-precision-"))
    common = [f"model.depth={args.depth}", f"model.sequence_len={args.seq_len}", "hardware.device_batch_size=8",
              "stage.total_batch_tokens=8192", f"stage.num_iterations={args.steps}",
              f"stage.eval_every={args.steps}", f"stage.eval_tokens={args.eval_tokens}"]
    results = {}
    for name, flags in CONFIGS.items():
        s = train_run(name.replace(" ", "_").replace("+", "_"), out, [*common, *flags])
        results[name] = s
        print(f"precision d{args.depth} T={args.seq_len} {name}: {s['tok_per_s']:,.0f} tok/s, "
              f"val bpb {s['val_bpb']:.4f} after {s['tokens']:,} tokens (wall {s['fit_seconds']:.0f} s incl. warm-up)")
    base = results["fp32 eager"]
    for name, s in results.items():
        if name != "fp32 eager":
            print(f"precision: {name} vs fp32 eager: speed-up {s['tok_per_s'] / base['tok_per_s']:.2f}x, "
                  f"val bpb {s['val_bpb'] - base['val_bpb']:+.4f}")


if __name__ == "__main__":
    main()
