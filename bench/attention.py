"""Attention kernels side by side: a sliding-window model's step with flex_attention vs SDPA with a boolean mask.

The model is the jul2026 preset at the given depth and context ("SSSL": three of four layers look back a quarter
of the context). Both backends run the same model and batches, alternating in rounds within one process; the
figure is the median step time. A third run, the same model without windows (every layer SDPA's causal kernel),
is the yardstick: windows should cost no more than full attention.

On CUDA a step is forward + backward (compiled flex_attention); elsewhere it is the forward only, because
flex_attention has no backward off CUDA, and flex runs uncompiled (unfused) there: a correctness figure, not the
GPU's.

    python bench/attention.py [--depth 4] [--seq-len 512] [--batch 4] [--device auto] [--dtype auto] [--steps 5]
        [--vocab N]

`compare_attention(...)` returns the figures as a dict (for bench/gpu_check.py).
"""
from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import torch

from nanochat import scaling
from nanochat.gpt import GPT, cast_compute_dtype
from nanochat.probe import synchronize

DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}


def _dtype(device: torch.device, dtype) -> torch.dtype:
    if dtype in (None, "auto"):
        return cast_compute_dtype(device)
    return DTYPES[dtype] if isinstance(dtype, str) else dtype


def _step_fn(model: GPT, x, y, train: bool):
    def step():
        if train:
            loss = model(x, y)
            loss.backward()
            model.zero_grad(set_to_none=True)
        else:
            with torch.no_grad():
                loss = model(x, y)
        return loss.detach()

    return step


def compare_attention(depth: int = 4, seq_len: int = 512, batch: int = 4, device="auto", dtype="auto",
                      steps: int = 5, reps: int = 3, warmup: int = 2, vocab_size: int | None = None) -> dict:
    """Median step seconds of "flex" and "sdpa" (masked) on a windowed model, and of full causal attention.

    vocab_size: None = the preset's (a small vocabulary lets attention, not the lm_head, dominate a small model).

    Returns {"device", "dtype", "mode" ("train" = forward + backward, or "forward"), "windows" (per layer),
    "flex_s", "sdpa_s", "full_s", "speedup" (sdpa / flex), "flex_vs_full" (flex / full), "loss_diff" (|flex - sdpa|
    on the same batch), "logit_diff" (max |flex - sdpa| of the logits), and on CUDA "flex_peak_mib" / "sdpa_peak_mib"}.
    """
    device = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                          "cpu" if device == "auto" else device)
    dtype = _dtype(device, dtype)
    train = device.type == "cuda"
    cfg = scaling.plan(depth, vocab_size=vocab_size, preset="jul2026", seq_len=seq_len, device_batch_size=batch,
                       num_iterations=1, total_batch_tokens=batch * seq_len).model
    full_cfg = dataclasses.replace(cfg, window_pattern=None)
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, cfg.vocab_size, (batch, seq_len + 1), generator=g).to(device)
    x, y = tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()

    models = {}
    for name, config, backend in (("flex", cfg, "flex"), ("sdpa", cfg, "sdpa"), ("full", full_cfg, "sdpa")):
        torch.manual_seed(0)  # the same weights for all three
        model = GPT.build(config, device=device, compute_dtype=dtype if dtype != torch.float32 else None)
        with torch.no_grad():  # zero-initialised projections would hide attention from the loss: fill them
            w = torch.Generator().manual_seed(1)
            for p in model.parameters():
                if p.ndim == 2 and not p.any():
                    p.copy_(0.1 * torch.randn(p.shape, generator=w).to(p.device, p.dtype))
        model.set_attention(backend)
        models[name] = model

    times: dict[str, list[float]] = {name: [] for name in models}
    peaks, losses = {}, {}
    for name, model in models.items():  # warm-up: compilation, allocator, block masks
        step = _step_fn(model, x, y, train)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        for _ in range(warmup):
            losses[name] = float(step())
        synchronize(device)
        if device.type == "cuda":
            peaks[name] = torch.cuda.max_memory_allocated(device) / 2**20
    for _ in range(reps):  # alternate rounds, so drift (clocks, other load) hits every backend alike
        for name, model in models.items():
            step = _step_fn(model, x, y, train)
            for _ in range(steps):
                synchronize(device)
                t0 = time.perf_counter()
                step()
                synchronize(device)
                times[name].append(time.perf_counter() - t0)
    med = {name: statistics.median(t) for name, t in times.items()}
    with torch.no_grad():
        logit_diff = (models["flex"](x) - models["sdpa"](x)).abs().max().item()
    out = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
           "dtype": str(dtype).replace("torch.", ""), "mode": "train" if train else "forward", "depth": depth,
           "seq_len": seq_len, "batch": batch, "vocab_size": cfg.vocab_size, "windows": models["flex"].window_sizes,
           "flex_s": med["flex"], "sdpa_s": med["sdpa"], "full_s": med["full"],
           "speedup": med["sdpa"] / med["flex"], "flex_vs_full": med["flex"] / med["full"],
           "loss_diff": abs(losses["flex"] - losses["sdpa"]), "logit_diff": logit_diff}
    if peaks:
        out.update(flex_peak_mib=peaks["flex"], sdpa_peak_mib=peaks["sdpa"], full_peak_mib=peaks["full"])
    return out


def describe(r: dict) -> list[str]:
    what = "train step (fwd+bwd)" if r["mode"] == "train" else "forward"
    tag = f"attention {what} d{r['depth']} T{r['seq_len']} B{r['batch']} V{r['vocab_size']} {r['device']} {r['dtype']}"
    lines = [
        f"{tag}: ms ours (flex) {1e3 * r['flex_s']:.2f}, peer (sdpa mask) {1e3 * r['sdpa_s']:.2f}, "
        f"ratio {r['flex_s'] / r['sdpa_s']:.2f} (< 1: flex faster)",
        f"{tag} vs full attention: ms ours (flex, windows) {1e3 * r['flex_s']:.2f}, peer (sdpa causal, no windows) "
        f"{1e3 * r['full_s']:.2f}, ratio {r['flex_vs_full']:.2f}; sdpa mask / full {r['sdpa_s'] / r['full_s']:.2f}",
        f"{tag}: |loss flex - loss sdpa| {r['loss_diff']:.2e}, max |logit diff| {r['logit_diff']:.2e}; windows per layer {r['windows']}",
    ]
    if "flex_peak_mib" in r:
        lines.append(f"{tag} peak memory MiB: ours (flex) {r['flex_peak_mib']:.0f}, peer (sdpa mask) "
                     f"{r['sdpa_peak_mib']:.0f}, full {r['full_peak_mib']:.0f}")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto", choices=("auto", *DTYPES))
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--vocab", type=int, default=None, help="vocabulary size (default: the preset's)")
    args = ap.parse_args()
    r = compare_attention(args.depth, args.seq_len, args.batch, args.device, args.dtype, args.steps, reps=args.reps,
                          vocab_size=args.vocab)
    print("\n".join(describe(r)), flush=True)


if __name__ == "__main__":
    main()
