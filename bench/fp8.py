"""fp8 against bf16 on this GPU: the matmul rate of the layers fp8 converts, then speed AND quality of training.

1. Matmuls: forward + backward of one Linear at d12's MLP shape (tokens x 768 -> 3072 and back), bf16 autocast
   vs `nanochat.fp8.Fp8Matmul` (quantisation included), best of a few repetitions.
2. Training, side by side: two `train.py` runs of the same model (default d12 at context 1024) on the embedded
   sample, same seed, data, batch and steps, differing only in `hardware.fp8`; prints the median tok/s (after
   the first step, so compile warm-up is excluded), MFU against the profile's bf16 peak, and the validation bpb
   and loss after the same steps, then the speed-up and the bpb difference.

Needs an NVIDIA GPU of compute capability 8.9+ (H100, GB10, L4, ...); anywhere else it says why and runs
nothing. Needs the sample tokenizer (trains it first when missing).

    python bench/fp8.py [--depth 12] [--seq-len 1024] [--batch 32] [--steps 100] [--hardware auto]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from train_cpu import ROOT, ensure_tokenizer

from nanochat.probe import synchronize


def time_fwd_bwd(fn, x, w, reps: int) -> float:
    """Best seconds of forward + backward of fn(x, w) over `reps` runs (after two warm-ups)."""
    grad = torch.randn(x.size(0), w.size(0), device=x.device, dtype=torch.bfloat16)
    best = float("inf")
    for i in range(reps + 2):
        x.grad = w.grad = None
        synchronize(x.device)
        t0 = time.perf_counter()
        fn(x, w).backward(grad)
        synchronize(x.device)
        if i >= 2:
            best = min(best, time.perf_counter() - t0)
    return best


def matmul_rows(tokens: int, d: int, reps: int = 10, device: str = "cuda") -> list[dict]:
    """fp8 vs bf16 autocast, forward + backward of one Linear at the MLP's two shapes (d -> 4d, 4d -> d):
    [{shape, bf16_flops, fp8_flops, speedup}] (FLOP/s). bench/gpu_check.py runs it too."""
    from nanochat.fp8 import Fp8Matmul

    device = torch.device(device)

    def bf16(x, w):
        with torch.autocast(device.type, dtype=torch.bfloat16):
            return torch.nn.functional.linear(x, w)

    rows = []
    for n_in, n_out in ((d, 4 * d), (4 * d, d)):
        x = torch.randn(tokens, n_in, device=device, dtype=torch.bfloat16, requires_grad=True)
        w = torch.randn(n_out, n_in, device=device, requires_grad=True)  # fp32 master weight, as in training
        flops = 6 * tokens * n_in * n_out  # forward + two backward matmuls
        t_bf16, t_fp8 = time_fwd_bwd(bf16, x, w, reps), time_fwd_bwd(Fp8Matmul.apply, x, w, reps)
        rows.append({"shape": f"{tokens}x{n_in}->{n_out}", "bf16_flops": flops / t_bf16, "fp8_flops": flops / t_fp8,
                     "speedup": t_bf16 / t_fp8})
    return rows


def matmul_comparison(tokens: int, d: int, reps: int = 10) -> None:
    for r in matmul_rows(tokens, d, reps):
        print(f"fp8 matmul {r['shape']} fwd+bwd: bf16 {r['bf16_flops'] / 1e12:.0f} TFLOP/s, "
              f"fp8 {r['fp8_flops'] / 1e12:.0f} TFLOP/s (speed-up {r['speedup']:.2f}x)")


def train(name: str, out: Path, overrides: list[str]) -> dict:
    run_dir = out / name
    cmd = [sys.executable, str(ROOT / "train.py"), "logger=none", f"run_name={name}", f"hydra.run.dir={run_dir}",
           "stage.sample_every=0", *overrides]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"train.py {' '.join(overrides)} failed:\n{proc.stderr[-2000:]}")
    fp8_lines = [line for line in proc.stdout.splitlines() if line.startswith("fp8:")]
    return {**json.loads((run_dir / "summary.json").read_text()), "fp8_line": fp8_lines[0] if fp8_lines else ""}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--depth", type=int, default=12)
    ap.add_argument("--seq-len", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=32, help="rows per step (one micro-batch)")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--eval-tokens", type=int, default=524288)
    ap.add_argument("--hardware", default="auto", help="hardware profile (its precision and compile apply)")
    ap.add_argument("--skip-training", action="store_true", help="only the matmul comparison")
    args = ap.parse_args()
    from nanochat.fp8 import fp8_unsupported_reason

    reason = fp8_unsupported_reason("gpu")
    if reason:
        print(f"fp8 bench skipped: fp8 matmuls need an NVIDIA GPU of compute capability 8.9+; {reason}")
        return
    print(f"fp8 bench on {torch.cuda.get_device_name(0)} (torch {torch.__version__})")
    matmul_comparison(args.batch * args.seq_len, 64 * args.depth)
    if args.skip_training:
        return
    ensure_tokenizer()
    out = Path(tempfile.mkdtemp(prefix="nanochat-fp8-"))
    common = [f"hardware={args.hardware}", f"model.depth={args.depth}", f"model.sequence_len={args.seq_len}",
              f"hardware.device_batch_size={args.batch}", f"stage.total_batch_tokens={args.batch * args.seq_len}",
              f"stage.num_iterations={args.steps}", f"stage.eval_every={args.steps}",
              f"stage.eval_tokens={args.eval_tokens}", f"stage.save_every={args.steps}"]
    results = {}
    for name, fp8 in (("bf16", "false"), ("fp8", "true")):
        s = results[name] = train(name, out, [*common, f"hardware.fp8={fp8}"])
        print(f"fp8 bench d{args.depth} T={args.seq_len} {name}: {s['tok_per_s']:,.0f} tok/s, MFU {s['mfu']:.1%}, "
              f"val bpb {s['val_bpb']:.4f}, val loss {s['val_loss']:.4f} after {s['steps']} steps "
              f"(wall {s['fit_seconds']:.0f} s incl. compile)")
        if s["fp8_line"]:
            print(f"  {s['fp8_line']}")
    base, fp8 = results["bf16"], results["fp8"]
    print(f"fp8 bench: fp8 vs bf16 speed-up {fp8['tok_per_s'] / base['tok_per_s']:.2f}x, "
          f"val bpb {fp8['val_bpb'] - base['val_bpb']:+.4f} after the same {args.steps} steps")
    print(f"fp8 bench: both runs kept in {out}")


if __name__ == "__main__":
    main()
