"""Facts about the machine a run is on: how much memory it really has, which attention kernel to use, what a run
will cost. Plain Python + torch; every probe of the real machine can be replaced by a value (for tests).

The one idea: trust the source that is right for the device. A discrete GPU reports its own free memory
(`cudaMemGetInfo`); a unified-memory GPU such as the DGX Spark's GB10 shares RAM with the CPU, NVML reports no
GPU memory there and the CUDA figure ignores reclaimable page cache, so its budget is `/proc/meminfo`'s
MemAvailable. Peak FLOPS, power and price stay configuration (`conf/hardware/*.yaml`): vendors' and users'
figures differ too much to hard-code.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from nanochat.common import NanochatError, knob

MEMINFO = Path("/proc/meminfo")
# GPUs that share system memory with the CPU (the name is what torch.cuda.get_device_name reports)
UNIFIED_MEMORY_GPUS = ("GB10", "Orin", "Thor")


# "bf16-cast" is the reference's compute-dtype scheme (Lightning runs "32-true"): fp32 master weights, bf16
# embeddings and activations, Linear layers casting their weights (nanochat.gpt.GPT.set_compute_dtype)
PRECISIONS = ("32-true", "32", "16-mixed", "bf16-mixed", "bf16-true", "bf16-cast", "64-true", "transformer-engine")
ATTENTION_CHOICES = ("auto", "sdpa", "flex")  # nanochat.attention_kernels.BACKENDS plus auto


@dataclass
class HardwareConfig:
    """hardware=<profile>: the machine (conf/hardware/); `auto` = this machine's profile."""

    name: str = knob("cpu", "profile name")
    accelerator: str = knob("cpu", "Lightning accelerator", choices=("cpu", "gpu", "cuda", "mps", "auto"))
    devices: Any = knob(1, "devices per node: a count, a list of ids, or auto")
    num_nodes: int = knob(1, "machines", low=1)
    strategy: str = knob("auto", "Lightning strategy (auto, ddp, ...)")
    precision: str = knob("32-true", "Lightning precision", choices=PRECISIONS)
    compile: bool = knob(False, "torch.compile the model for training")
    fp8: bool = knob(False, "train the large Linear layers in fp8 (tensorwise scaling; needs sm_89+: H100, GB10); "
                            "evaluation stays full precision, MFU stays against peak_flops")
    attention: str = knob("auto", "attention kernel: auto = flex on CUDA for models with sliding windows shorter than the "
                                  "context (SDPA's flash kernel stays on full layers), else sdpa; sdpa; flex",
                          choices=ATTENTION_CHOICES)
    loss_chunk: int = knob(0, "tokens per chunk of the fused lm_head + soft-capped cross-entropy in training "
                              "(0 = off: full logits)", low=0)
    peak_flops: Optional[Any] = knob(None, "peak FLOP/s per device for MFU and time estimates: a number, or auto "
                                           "(measured by a cached matmul probe in the profile's precision, "
                                           "nanochat.probe)")
    peak_flops_nominal: Optional[float] = knob(None, "peak_flops=auto on a machine without this profile's GPU (a "
                                                     "plan made elsewhere): FLOP/s per device assumed instead", low=0)
    device_batch_size: Any = knob(8, "rows per micro-batch per device (base, mid); auto = the largest that fits "
                                     "(probed on CUDA, estimated elsewhere)")
    num_threads: Optional[int] = knob(None, "torch intra-op threads (null = torch's default)", low=1)
    memory_headroom: float = knob(0.25, "fraction of device memory the memory fit leaves free", low=0, high=0.95)
    expected_mfu: float = knob(0.3, "MFU assumed for the time estimate printed before a run", low=0.001, high=1)
    power_watts: Optional[float] = knob(None, "per device: energy = hours x watts x devices", low=0)
    price_per_hour: Optional[float] = knob(None, "per device, rented machines", low=0)
    price_per_kwh: Optional[float] = knob(None, "owned machines: the electricity price", low=0)



@dataclass(frozen=True)
class DeviceMemory:
    total: int  # bytes
    available: int  # bytes free for this process now
    source: str  # "cuda" (cudaMemGetInfo) or "meminfo" (/proc/meminfo)
    unified: bool  # CPU and GPU share this memory
    device: str  # "cpu" or the GPU's name

    def describe(self) -> str:
        kind = "unified" if self.unified else ("host" if self.device == "cpu" else "GPU")
        return (f"{self.device}: {self.available / 2**30:.1f} GiB of {self.total / 2**30:.1f} GiB {kind} memory "
                f"available (from {self.source})")


def parse_meminfo(text: str) -> dict[str, int]:
    """/proc/meminfo as {field: bytes} (values there are in kB)."""
    out = {}
    for line in text.splitlines():
        key, sep, rest = line.partition(":")
        parts = rest.split()
        if not sep or not parts:
            continue
        try:
            value = int(parts[0])
        except ValueError:
            continue
        out[key.strip()] = value * 1024 if len(parts) > 1 and parts[1].lower() == "kb" else value
    return out


def meminfo_memory(text: str | None = None, device: str = "cpu", unified: bool = False) -> DeviceMemory:
    if text is None:
        try:
            text = MEMINFO.read_text()
        except OSError as e:
            raise NanochatError(f"cannot read {MEMINFO} to size memory: {e}") from None
    info = parse_meminfo(text)
    if "MemTotal" not in info:
        raise NanochatError("/proc/meminfo has no MemTotal line")
    # MemAvailable (kernel >= 3.14) counts reclaimable cache; older kernels: free + buffers + cached
    avail = info.get("MemAvailable", info.get("MemFree", 0) + info.get("Buffers", 0) + info.get("Cached", 0))
    return DeviceMemory(total=info["MemTotal"], available=avail, source="meminfo", unified=unified, device=device)


def is_unified_memory(device_name: str, integrated: bool = False) -> bool:
    return integrated or any(tag in device_name for tag in UNIFIED_MEMORY_GPUS)


def device_memory(device_index: int = 0, *, device_name: str | None = None, integrated: bool | None = None,
                  mem_get_info: Callable[[int], tuple[int, int]] | None = None,
                  meminfo_text: str | None = None) -> DeviceMemory:
    """Total and available memory of the training device (GPU `device_index`, or the host without CUDA).

    Keyword arguments replace the live queries (tests, or a machine described from outside).
    """
    if device_name is None:
        import torch

        if not torch.cuda.is_available():
            return meminfo_memory(meminfo_text)
        device_name = torch.cuda.get_device_name(device_index)
        props = torch.cuda.get_device_properties(device_index)
        integrated = bool(getattr(props, "is_integrated", False)) if integrated is None else integrated
    if device_name == "cpu":
        return meminfo_memory(meminfo_text)
    if is_unified_memory(device_name, bool(integrated)):
        return meminfo_memory(meminfo_text, device=device_name, unified=True)
    if mem_get_info is None:
        import torch

        mem_get_info = torch.cuda.mem_get_info
    try:
        free, total = mem_get_info(device_index)
    except Exception:  # e.g. NVML/driver without memory reporting: fall back to the host's view
        free = total = 0
    if total <= 0:
        return meminfo_memory(meminfo_text, device=device_name, unified=True)
    return DeviceMemory(total=int(total), available=int(free), source="cuda", unified=False, device=device_name)


# -----------------------------------------------------------------------------------------------------------
# attention kernels


@dataclass(frozen=True)
class AttentionBackend:
    name: str  # "sdpa" or "flex" (nanochat.attention_kernels.BACKENDS)
    reason: str

    def describe(self) -> str:
        return f"attention: {self.name} ({self.reason})"


def resolve_attention(choice: str, config, device_type: str, capability: tuple[int, int] | None = None, *,
                      training: bool = False) -> AttentionBackend:
    """The attention kernel of a model (`GPTConfig`) on a device type ("cuda", "cpu", "mps").

    auto: "flex" on a CUDA GPU (sm_80+) when the model has sliding-window layers shorter than its context and torch
    has flex_attention (an explicit mask keeps SDPA off its flash kernel there), else "sdpa". An explicit choice is
    honoured; "flex" off CUDA runs eagerly (slow) and cannot train (no backward), so `training=True` refuses it.
    `capability` defaults to GPU 0's when CUDA is visible.
    """
    from nanochat.attention_kernels import has_flex
    from nanochat.gpt import window_sizes

    if choice not in ATTENTION_CHOICES:
        raise NanochatError(f"hardware.attention={choice!r} must be one of: {', '.join(ATTENTION_CHOICES)}")
    short = sorted({w for w in window_sizes(config) if w < config.sequence_len})
    windows = (f"{sum(w < config.sequence_len for w in window_sizes(config))} of {config.n_layer} layers look back "
               f"{'/'.join(map(str, short))} of {config.sequence_len} tokens")
    if choice == "sdpa":
        return AttentionBackend("sdpa", "asked for")
    if choice == "flex":
        if not has_flex():
            raise NanochatError("hardware.attention=flex needs torch.nn.attention.flex_attention (torch >= 2.5)")
        if device_type != "cuda":
            if training:
                raise NanochatError(f"hardware.attention=flex cannot train on {device_type}: flex_attention has a "
                                    "backward only on CUDA; use attention=sdpa or auto")
            return AttentionBackend("flex", f"asked for; on {device_type} flex_attention runs uncompiled (slow) "
                                            "and cannot train")
        if not short:
            return AttentionBackend("flex", "asked for; no layer has a window shorter than the context, so every "
                                            "layer still runs SDPA's causal kernel")
        return AttentionBackend("flex", f"asked for; {windows} through compiled flex_attention")
    # auto
    if device_type != "cuda":
        return AttentionBackend("sdpa", f"{device_type}: flex_attention is compiled (fast) only on CUDA")
    if not short:
        return AttentionBackend("sdpa", "no sliding-window layers: SDPA's causal flash kernel everywhere")
    if not has_flex():
        return AttentionBackend("sdpa", f"{windows} but this torch has no flex_attention (needs >= 2.5)")
    if capability is None:
        import torch

        capability = torch.cuda.get_device_capability(0) if torch.cuda.is_available() else None
    if capability is not None and tuple(capability) < (8, 0):
        sm = f"sm_{capability[0]}{capability[1]}"
        return AttentionBackend("sdpa", f"{sm}: flex_attention's kernels are tuned for sm_80 and newer")
    return AttentionBackend("flex", f"{windows}: flex_attention skips the blocks outside the window, where SDPA "
                                    "with a mask leaves its flash kernel")


# -----------------------------------------------------------------------------------------------------------
# time, energy and cost of a run


def estimate_run(plan, hardware, mfu: float | None = None, peak_source: str | None = None) -> str:
    """The one estimate printed before a run: wall time at the profile's MFU of its peak, then energy and cost.

    From the hardware profile: peak_flops (per device; "auto" is resolved here by nanochat.probe unless the
    caller resolved it and names how in `peak_source`), expected_mfu, power_watts (per device, its share of the
    host included), price_per_hour (per device; rented machines) or price_per_kwh (owned ones).
    """
    peak = hardware.peak_flops
    if peak == "auto":
        from nanochat.probe import resolve_peak_flops

        resolved = resolve_peak_flops(hardware)
        peak, peak_source = resolved.value, resolved.source
    mfu = float(mfu if mfu is not None else (hardware.expected_mfu or 0.4))
    if not isinstance(peak, (int, float)) or peak <= 0:
        return "run estimate: set hardware.peak_flops to estimate the time"
    if not 0 < mfu <= 1:
        raise NanochatError(f"expected MFU must be in (0, 1], got {mfu}")
    hours = plan.estimated_hours(float(peak), mfu)
    devices = plan.world_size
    line = (f"run estimate: {plan.total_flops:.3e} FLOPs on {devices} device(s) at {mfu:.0%} MFU of "
            f"{float(peak):.3g} FLOP/s each{f' ({peak_source})' if peak_source else ''} -> {duration(hours)}")
    return "\n".join([line, *cost_lines(hours, hardware, devices)])


def cost_lines(hours: float, hardware, devices: int = 1) -> list[str]:
    """Energy and cost of `hours` on `devices` devices of this profile (none when the profile gives no figures)."""
    lines = []
    watts = hardware.power_watts
    kwh = None
    if watts:
        kwh = hours * float(watts) * devices / 1000.0
        lines.append(f"  energy    {kwh:,.2f} kWh ({float(watts):g} W x {devices} device(s))")
    price_h, price_kwh = hardware.price_per_hour, hardware.price_per_kwh
    if price_h:
        lines.append(f"  cost      ${hours * float(price_h) * devices:,.2f} (${float(price_h):g}/h per device)")
    elif price_kwh and kwh is not None:
        lines.append(f"  cost      ${kwh * float(price_kwh):,.2f} of electricity (${float(price_kwh):g}/kWh)")
    return lines


def duration(hours: float) -> str:
    if hours < 1 / 60:
        return f"{hours * 3600:.0f} s"
    if hours < 1:
        return f"{hours * 60:.1f} min"
    if hours < 48:
        return f"{hours:.2f} h"
    return f"{hours / 24:.1f} days"


__all__ = ["AttentionBackend", "DeviceMemory", "cost_lines", "device_memory", "duration", "estimate_run",
           "is_unified_memory", "meminfo_memory", "parse_meminfo", "resolve_attention"]
