"""Logits memory: the full-logits loss against the chunked lm_head + soft-capped cross-entropy, side by side.

One model, one batch, both loss paths (`GPT.set_loss_chunk(0)` and `(chunk)`), measured in the same run:
- the peak memory of one training micro-step (forward + backward) above what was resident before it: on CUDA
  from the allocator (`torch.cuda.max_memory_allocated`), on CPU by counting live tensor bytes
  (`nanochat.memory.measure_peak`, a separate pass because the meter slows the step);
- training tok/s of forward + backward + an AdamW step, the median of `steps` repetitions after one warm-up
  step each, the two paths alternating so that drift in the machine's speed hits both alike;
- the loss of both (they must agree) and the memory estimate of each (`nanochat.memory`).

    python bench/logits_memory.py [--depth 8] [--seq-len 2048] [--batch 1] [--chunk 2048] [--steps 3]

`compare_loss(...)` is the measurement as a function (GPU checks import it).
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from nanochat import scaling
from nanochat.gpt import GPT
from nanochat.memory import estimate_training_memory, gib, measure_peak
from nanochat.probe import synchronize


def _step_peak(model, x, device: torch.device) -> int:
    """Bytes one forward + backward adds at its peak over what is alive before it."""
    def step():
        model(x, x).backward()
        model.zero_grad(set_to_none=True)

    if device.type != "cuda":
        return measure_peak(step)
    synchronize(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    step()
    synchronize(device)
    return torch.cuda.max_memory_allocated(device) - base


def compare_loss(depth: int = 8, seq_len: int = 2048, batch: int = 1, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32, chunk: int = 2048, steps: int = 3, *, vocab_size: int = 65536,
                 compile: bool = False) -> dict:
    """Plain vs chunked loss for a d`depth` model on `batch` x `seq_len` random tokens.

    dtype: the activations' dtype (bf16 = the "bf16-cast" precision: fp32 master weights, bf16 matmuls).
    Returns {"plain": {...}, "chunked": {...}, "memory_ratio", "speed_ratio", "loss_diff", and the settings};
    each side has step_peak_bytes, estimate_bytes (the estimate's activations + workspace + gradients, the part
    a step adds), tok_per_s, step_seconds (all reps) and loss. Ratios are chunked / plain.
    """
    device = torch.device(device)
    cfg = scaling.model_config(depth, vocab_size=vocab_size, seq_len=seq_len)
    torch.manual_seed(0)
    model = GPT.build(cfg, device=device, compute_dtype=None if dtype == torch.float32 else dtype)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    runner = torch.compile(model, dynamic=False) if compile else model
    x = torch.randint(0, vocab_size, (batch, seq_len), device=device)
    precision = "bf16-cast" if dtype == torch.bfloat16 else "32-true"
    sides = {"plain": 0, "chunked": chunk}
    out: dict = {"depth": depth, "seq_len": seq_len, "batch": batch, "device": str(device), "dtype": str(dtype),
                 "chunk": chunk, "steps": steps, "vocab_size": vocab_size, "compile": compile}

    def train_step(n: int) -> tuple[float, float]:
        model.set_loss_chunk(n)
        synchronize(device)
        t0 = time.perf_counter()
        loss = runner(x, x)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        synchronize(device)
        return time.perf_counter() - t0, float(loss.detach())

    for name, n in sides.items():  # warm-up (and compilation) of both paths before anything is timed
        train_step(n)
    times: dict[str, list[float]] = {name: [] for name in sides}
    for _ in range(steps):
        for name, n in sides.items():
            times[name].append(train_step(n)[0])
    tokens = batch * seq_len
    for name, n in sides.items():
        model.set_loss_chunk(n)
        with torch.no_grad():
            loss = float(model(x, x))
        peak = _step_peak(model, x, device)
        est = estimate_training_memory(cfg, device_batch_size=batch, precision=precision, compile=compile,
                                       loss_chunk=n)
        out[name] = {"step_peak_bytes": int(peak), "estimate_bytes": int(est.activations + est.workspace + est.grads),
                     "tok_per_s": tokens / statistics.median(times[name]), "step_seconds": times[name], "loss": loss}
    model.set_loss_chunk(0)
    out["memory_ratio"] = out["chunked"]["step_peak_bytes"] / out["plain"]["step_peak_bytes"]
    out["speed_ratio"] = out["chunked"]["tok_per_s"] / out["plain"]["tok_per_s"]
    out["loss_diff"] = abs(out["chunked"]["loss"] - out["plain"]["loss"])
    return out


def describe(r: dict) -> str:
    head = (f"logits memory d{r['depth']} T={r['seq_len']} batch {r['batch']} vocab {r['vocab_size']:,} "
            f"{r['dtype'].replace('torch.', '')} on {r['device']}{' compiled' if r['compile'] else ''}, "
            f"chunk {r['chunk']:,}, {r['steps']} timed steps")
    lines = [head]
    for name in ("plain", "chunked"):
        s = r[name]
        lines.append(f"  {name:8s} step peak {gib(s['step_peak_bytes'])} (estimate {gib(s['estimate_bytes'])}), "
                     f"{s['tok_per_s']:,.0f} tok/s, loss {s['loss']:.5f}")
    lines.append(f"  chunked / plain: memory {r['memory_ratio']:.2f}x, speed {r['speed_ratio']:.2f}x, "
                 f"loss difference {r['loss_diff']:.1e}")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--depth", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=2048)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--chunk", type=int, default=2048)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--vocab", type=int, default=65536)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", choices=("fp32", "bf16"), default=None, help="default: bf16 on CUDA, fp32 on CPU")
    ap.add_argument("--compile", action="store_true")
    args = ap.parse_args()
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype or ("bf16" if args.device != "cpu" else "fp32")]
    r = compare_loss(args.depth, args.seq_len, args.batch, args.device, dtype, args.chunk, args.steps,
                     vocab_size=args.vocab, compile=args.compile)
    print(describe(r))


if __name__ == "__main__":
    main()
