"""The best dense matmul rate of this machine in fp32 and bf16: where a hardware profile's `peak_flops` comes from.

MFU is only as honest as its denominator. For each dtype and square size n, time `a @ b` (2·n³ FLOPs) several
times and keep the best rate; the best over sizes is the machine's practical peak. The timing is
nanochat.probe's, the probe behind `hardware.peak_flops=auto` (which caches one figure per device and dtype). On a
CPU the rate depends on the thread count (torch's default: every core), so run it on an otherwise idle machine.

    python bench/peak_flops.py [--sizes 1024 2048 4096] [--reps 5] [--device cpu|cuda]
"""
from __future__ import annotations

import argparse

import torch

from nanochat.probe import matmul_rate  # the same timing as hardware.peak_flops=auto


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048, 4096])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    where = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else f"cpu, {torch.get_num_threads()} threads"
    print(f"peak_flops on {where} (torch {torch.__version__}), best of {args.reps}")
    best = {}
    for dtype in (torch.float32, torch.bfloat16):
        name = str(dtype).removeprefix("torch.")
        for n in args.sizes:
            rate = matmul_rate(n, dtype, args.device, reps=args.reps, inner=10 if args.device.startswith("cuda") else 1)
            best[name] = max(best.get(name, 0.0), rate)
            print(f"  {name:8s} n={n:5d}: {rate / 1e9:8.1f} GFLOP/s")
    for name, rate in best.items():
        print(f"peak_flops {name}: {rate:.3g} FLOP/s ({rate / 1e9:.1f} GFLOP/s)")
    print(f"peak_flops bf16/fp32 ratio: {best['bfloat16'] / best['float32']:.2f}")


if __name__ == "__main__":
    main()
