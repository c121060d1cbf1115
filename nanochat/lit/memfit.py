"""Choose the device batch that fits in memory, keep the token batch, and fail before training when it cannot fit.

The one idea: the optimizer sees `total_batch_tokens = device_batch x seq_len x world x accumulation` tokens per
step whatever the memory, so only the split changes: the device batch is a power of two that divides the token
batch, and accumulation makes up the rest. Candidates start at the largest the estimate (`nanochat.memory`)
allows within the memory budget and halve; on a single CUDA device each candidate is confirmed by a real probe
(a few forward/backward steps and an optimizer step, peak memory measured) before training starts. The budget
is the device's available memory minus `hardware.memory_headroom` (a fraction of total memory left for the OS,
the CUDA context and the data loader; on unified-memory GB10 the OS shares that memory).

`hardware.device_batch_size: auto` searches; an explicit size is kept if it fits, else a NanochatError names the
largest size that does. On CPU, or with several devices (every rank must pick the same size), it is estimate only.
"""
from __future__ import annotations

import gc
import os
from dataclasses import dataclass, field, replace
from typing import Callable

from nanochat.common import NanochatError
from nanochat.hardware import DeviceMemory, device_memory
from nanochat.memory import MemoryEstimate, estimate_training_memory, gib
from nanochat.scaling import batch_candidates  # noqa: F401  (re-exported: the candidates the fit tries)

DEFAULT_HEADROOM = 0.10


@dataclass
class ProbeResult:
    fits: bool
    peak: int  # bytes measured (0 when it ran out of memory)
    error: str = ""


@dataclass
class FitReport:
    device_batch: int
    grad_accum: int
    pinned: bool
    budget: int  # bytes the run may use
    memory: DeviceMemory
    estimate: MemoryEstimate  # at the chosen device batch
    probed: dict[int, ProbeResult] = field(default_factory=dict)
    estimates: dict[int, int] = field(default_factory=dict)  # candidate -> estimated bytes

    def describe(self) -> str:
        how = "pinned by hardware.device_batch_size" if self.pinned else "largest that fits"
        lines = [
            f"memory fit: device batch {self.device_batch} x accumulation {self.grad_accum} ({how})",
            f"  budget    {gib(self.budget)} = {self.memory.describe()}, minus headroom",
            f"  estimate  {gib(self.estimate.total)} at device batch {self.device_batch}",
        ]
        for b, r in sorted(self.probed.items(), reverse=True):
            status = f"fits, peak {gib(r.peak)}" if r.fits else f"does not fit ({r.error or gib(r.peak)})"
            lines.append(f"  probe     device batch {b}: {status}")
        return "\n".join(lines)


def check_device_batch(value) -> None:
    """`hardware.device_batch_size` is a positive integer or "auto" (a NanochatError naming the key otherwise)."""
    if value != "auto" and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
        raise NanochatError(f"hardware.device_batch_size: {value!r} is not allowed; expected a positive integer or auto")


def planning_batch_size(device_batch_size, total_batch_tokens: int, seq_len: int, world_size: int = 1) -> int:
    """The device batch to build a plan with: the configured one, or for `auto` the largest candidate
    (`choose_device_batch` then lowers it to what fits)."""
    check_device_batch(device_batch_size)
    if device_batch_size == "auto":
        return batch_candidates(int(total_batch_tokens), seq_len, world_size)[0]
    return device_batch_size


def memory_budget(memory: DeviceMemory, headroom: float) -> int:
    if not 0 <= headroom < 1:
        raise NanochatError(f"hardware.memory_headroom must be in [0, 1), got {headroom}")
    return max(0, int(memory.available - headroom * memory.total))


def choose_device_batch(plan, hardware, probe: bool = True, *, memory: DeviceMemory | None = None,
                        try_batch: Callable[[int], ProbeResult] | None = None) -> tuple[int, int, FitReport]:
    """(device_batch, grad_accum, report) for this plan on this hardware profile.

    `hardware`: a HardwareConfig (accelerator, precision, compile, loss_chunk, device_batch_size: int or "auto",
    memory_headroom).
    `probe`: confirm candidates with real steps (only on a single CUDA device; estimate only otherwise).
    `memory` / `try_batch` replace the live memory query and the CUDA probe (tests, or a custom probe).
    """
    requested = hardware.device_batch_size
    check_device_batch(requested)
    pinned = requested != "auto"
    precision = str(hardware.precision)
    compile_ = bool(hardware.compile)
    loss_chunk = int(getattr(hardware, "loss_chunk", 0) or 0)
    on_gpu = hardware.accelerator in ("gpu", "cuda")
    if memory is None:
        memory = device_memory(int(os.environ.get("LOCAL_RANK", 0))) if on_gpu else device_memory(device_name="cpu")
    headroom = hardware.memory_headroom
    budget = memory_budget(memory, DEFAULT_HEADROOM if headroom is None else float(headroom))
    seq, world, total = plan.seq_len, plan.world_size, plan.total_batch_tokens
    candidates = batch_candidates(total, seq, world)
    if pinned and requested not in candidates:
        from nanochat.scaling import grad_accum_steps

        grad_accum_steps(total, requested, seq, world)  # explains a size that does not divide
        # divides, but not a power of two: allowed when pinned (the user chose it); search below it otherwise
        candidates = sorted({requested, *candidates}, reverse=True)

    def estimate(b: int) -> MemoryEstimate:
        return estimate_training_memory(plan, device_batch_size=b, precision=precision, compile=compile_,
                                        loss_chunk=loss_chunk)

    estimates = {b: estimate(b).total for b in candidates}
    use_probe = probe and (try_batch is not None or (on_gpu and world == 1))
    if use_probe and try_batch is None:
        try_batch = cuda_probe(plan, precision, compile_, budget, loss_chunk=loss_chunk)
    report = FitReport(device_batch=0, grad_accum=0, pinned=pinned, budget=budget, memory=memory,
                       estimate=estimate(candidates[-1]), estimates=estimates)

    def fits(b: int) -> bool:
        if not use_probe:
            return estimates[b] <= budget
        if b not in report.probed:
            report.probed[b] = try_batch(b)
        return report.probed[b].fits

    def largest_fitting(below: int | None = None) -> int | None:
        pool = [b for b in candidates if below is None or b < below]
        # start from the largest the estimate allows (the probe then halves), or the smallest if none is allowed
        start = next((b for b in pool if estimates[b] <= budget), pool[-1] if pool else None)
        for b in pool:
            if start is not None and b > start:
                continue
            if fits(b):
                return b
        return None

    if pinned:
        if not fits(requested):
            best = largest_fitting(below=requested)
            need = report.probed[requested].peak if requested in report.probed and report.probed[requested].peak \
                else estimates[requested]
            advice = (f"the largest that fits is device_batch_size={best} (set hardware.device_batch_size={best} "
                      f"or auto)") if best else "not even device batch 1 fits: use a smaller model or sequence"
            raise NanochatError(
                f"hardware.device_batch_size={requested} does not fit in memory: it needs ~{gib(need)}, the budget "
                f"is {gib(budget)} ({memory.describe()}, minus headroom); {advice}")
        chosen = requested
    else:
        chosen = largest_fitting()
        if chosen is None:
            raise NanochatError(
                f"not even device batch 1 fits in memory: it needs ~{gib(estimates[candidates[-1]])}, the budget is "
                f"{gib(budget)} ({memory.describe()}, minus headroom); use a smaller model, a shorter sequence or "
                f"lower hardware.memory_headroom")
    report.device_batch, report.grad_accum = chosen, total // (chosen * seq * world)
    report.estimate = estimate(chosen)
    return report.device_batch, report.grad_accum, report


def fit_plan(plan, hardware, probe: bool = True, **kwargs):
    """(plan with the chosen device batch and accumulation, report)."""
    batch, accum, report = choose_device_batch(plan, hardware, probe, **kwargs)
    return replace(plan, device_batch_size=batch, grad_accum=accum), report


def apply_fit(run, hardware, probe: bool = True, **kwargs) -> FitReport:
    """Choose the device batch for a stage's run and apply it to its plan and data module (before the Trainer)."""
    old = run.plan.device_batch_size
    run.plan, report = fit_plan(run.plan, hardware, probe, **kwargs)
    dm = run.datamodule
    if getattr(dm, "batch_size", None) is not None:
        if getattr(dm, "val_batch_size", None) == old:
            dm.val_batch_size = report.device_batch
        dm.batch_size = report.device_batch
    return report


# -----------------------------------------------------------------------------------------------------------
# the CUDA probe


def cuda_probe(plan, precision: str, compile: bool, budget: int, steps: int = 2,
               device_index: int | None = None, loss_chunk: int = 0) -> Callable[[int], ProbeResult]:
    """A function batch -> ProbeResult running `steps` micro-batches of forward/backward and one optimizer step.

    The probe runs eager (compiling every candidate would take minutes); with compile on, its measured peak is
    scaled by the estimate's compiled/eager ratio before it is compared with the budget.
    """
    import torch

    from nanochat.gpt import GPT
    from nanochat.optim import build_optimizer

    index = int(os.environ.get("LOCAL_RANK", 0)) if device_index is None else device_index
    device = torch.device("cuda", index)
    dtype = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(precision)
    half = {"bf16-true": torch.bfloat16, "16-true": torch.float16}.get(precision)

    def run(batch: int) -> ProbeResult:
        model = opt = None
        ratio = 1.0
        if compile:
            eager = estimate_training_memory(plan, device_batch_size=batch, precision=precision, compile=False,
                                             loss_chunk=loss_chunk)
            compiled = estimate_training_memory(plan, device_batch_size=batch, precision=precision, compile=True,
                                                loss_chunk=loss_chunk)
            ratio = compiled.total / eager.total
        try:
            gc.collect()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
            cast = torch.bfloat16 if precision == "bf16-cast" else None  # bf16 embeddings, fp32 master weights
            model = GPT.build(plan.model, device=device, compute_dtype=cast)
            model.set_loss_chunk(loss_chunk)
            if half is not None:
                model = model.to(half)
            opt = build_optimizer(model, **plan.optimizer_kwargs())
            V = plan.model.vocab_size
            x = torch.randint(0, V, (batch, plan.seq_len), device=device)
            for _ in range(2):  # the second optimizer step runs with the optimizer state allocated
                for _ in range(steps):
                    with torch.autocast("cuda", dtype=dtype, enabled=dtype is not None):
                        loss = model(x, x)
                    loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
            torch.cuda.synchronize(device)
            peak = int((torch.cuda.max_memory_reserved(device) - base) * ratio)
            return ProbeResult(fits=peak <= budget, peak=peak)
        except torch.cuda.OutOfMemoryError:
            return ProbeResult(fits=False, peak=0, error="out of memory")
        finally:
            del model, opt
            gc.collect()
            torch.cuda.empty_cache()

    return run


__all__ = ["FitReport", "ProbeResult", "apply_fit", "batch_candidates", "check_device_batch", "choose_device_batch",
           "cuda_probe", "fit_plan", "memory_budget", "planning_batch_size"]
