"""The measured peak FLOP/s behind `hardware.peak_flops=auto`: a short dense matmul probe, cached per machine.

MFU and every time estimate divide by a peak rate, and vendors' figures are not what a chip sustains (GB10's
"209 TFLOPS" is a derived marketing number; owners measure 92-98 dense bf16). So `auto` times square matmuls in
the profile's compute dtype and keeps the best rate. The result is cached as JSON under the base directory, keyed
by device name + torch version + dtype, so a run pays for the probe once per machine and software stack.

A plan made on a machine without the profile's GPU (`hardware=dgx_spark plan_only=true` on a laptop) must not time
the laptop's CPU as if it were the GPU: it uses the profile's `peak_flops_nominal` and says so.
Plain PyTorch; `bench/peak_flops.py` reports the same probe per size and dtype.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch

from nanochat.common import NanochatError, get_base_dir, read_json_cache, update_json_cache

AUTO = "auto"
CACHE_NAME = "peak_flops.json"
GPU_SIZES = (4096, 8192)  # 8192^3 bf16 is ~1 ms on an H100, ~12 ms on a GB10: big enough to saturate either
CPU_SIZES = (1024, 2048)


def check_peak_flops(value, key: str = "hardware.peak_flops") -> None:
    """A positive number (FLOP/s per device), `auto` or null; anything else is one NanochatError naming the key."""
    if value is None or value == AUTO:
        return
    number = None
    if not isinstance(value, bool):
        try:
            number = float(value)
        except (TypeError, ValueError):
            pass
    if number is None or not number > 0 or number == float("inf"):
        raise NanochatError(f"{key}: {value!r} is not allowed; expected a positive number (FLOP/s per device), "
                            f"auto (measured by a matmul probe) or null")


def probe_dtype(precision: str) -> torch.dtype:
    """The matmul dtype a Lightning precision computes in: bf16 for bf16-*, fp16 for 16-*, else fp32."""
    p = str(precision)
    if p.startswith("bf16") or p == "transformer-engine":
        return torch.bfloat16
    if p.startswith("16"):
        return torch.float16
    if p.startswith("64"):
        return torch.float64
    return torch.float32


def dtype_name(dtype: torch.dtype) -> str:
    return {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32", torch.float64: "fp64"}.get(
        dtype, str(dtype).removeprefix("torch."))


def synchronize(device: str | torch.device) -> None:
    """Wait for the device's queued work (a no-op off CUDA): what every timer here stops behind."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_rate(n: int, dtype: torch.dtype, device: str | torch.device, reps: int = 5, inner: int = 1) -> float:
    """Best FLOP/s of an n x n @ n x n matmul over `reps` timed windows of `inner` back-to-back products
    (after one warm-up). Random operands: all-zero ones draw less power and read faster than real work."""
    device = torch.device(device)
    gen = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(n, n, generator=gen).to(device=device, dtype=dtype)
    b = torch.randn(n, n, generator=gen).to(device=device, dtype=dtype)
    torch.matmul(a, b)
    synchronize(device)
    best = float("inf")
    for _ in range(max(1, reps)):
        t0 = time.perf_counter()
        for _ in range(max(1, inner)):
            torch.matmul(a, b)
        synchronize(device)
        best = min(best, (time.perf_counter() - t0) / max(1, inner))
    return 2 * n ** 3 / best


def measure_peak(device: str | torch.device, dtype: torch.dtype, sizes: tuple[int, ...] | None = None,
                 reps: int = 5) -> float:
    """The best matmul rate over `sizes` (default: large on CUDA, small on CPU) on `device` in `dtype`."""
    device = torch.device(device)
    on_cuda = device.type == "cuda"
    sizes = sizes or (GPU_SIZES if on_cuda else CPU_SIZES)
    inner = 10 if on_cuda else 1  # a window of several products hides the launch and sync latency on a GPU
    return max(matmul_rate(n, dtype, device, reps=reps, inner=inner) for n in sizes)


def device_label(device: str | torch.device) -> str:
    """The name a cache entry is keyed by: the GPU's name, or the CPU's model and thread count."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = "cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.partition(":")[2].strip()
                break
    except OSError:
        pass
    return f"{model} ({torch.get_num_threads()} threads)"


def cache_path() -> Path:
    return get_base_dir() / CACHE_NAME


def cache_key(device_name: str, dtype: torch.dtype) -> str:
    return f"{device_name} | torch {torch.__version__} | {dtype_name(dtype)}"


def measured_peak(device: str | torch.device, dtype: torch.dtype, *, refresh: bool = False,
                  sizes: tuple[int, ...] | None = None, path: Path | None = None) -> tuple[float, bool]:
    """(FLOP/s, came from the cache) for `device` in `dtype`: the cached figure, else a fresh probe written back
    atomically (a concurrent writer at worst repeats the probe; the file is never half-written)."""
    path = path or cache_path()
    key = cache_key(device_label(device), dtype)
    entry = read_json_cache(path).get(key)
    if not refresh and isinstance(entry, dict) and float(entry.get("flops", 0)) > 0:
        return float(entry["flops"]), True
    flops = measure_peak(device, dtype, sizes)
    update_json_cache(path, key, {"flops": flops, "measured": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                                  "sizes": list(sizes or (GPU_SIZES if torch.device(device).type == "cuda" else CPU_SIZES))})
    return flops, False


@dataclass(frozen=True)
class PeakFlops:
    value: float | None  # FLOP/s per device; None = unknown (no MFU, no time estimate)
    source: str  # how it was obtained, printed after the figure

    def describe(self) -> str:
        return "peak FLOP/s unknown" if self.value is None else f"{self.value:.3g} FLOP/s ({self.source})"


def resolve_peak_flops(hardware, *, cuda_available: bool | None = None, device_index: int | None = None,
                       path: Path | None = None) -> PeakFlops:
    """The peak FLOP/s a run's MFU and estimates use: the profile's number, or for `auto` a measured one.

    `auto` on a GPU profile measures GPU `device_index` (default $LOCAL_RANK) when CUDA is here, else falls back to
    `peak_flops_nominal` (a plan made for another machine); on a CPU profile it measures this CPU.
    """
    value = hardware.peak_flops
    check_peak_flops(value)
    if value is None:
        return PeakFlops(None, "not set")
    if value != AUTO:
        return PeakFlops(float(value), "configured")
    dtype = probe_dtype(hardware.precision)
    on_gpu = str(hardware.accelerator) in ("gpu", "cuda")
    if on_gpu:
        if cuda_available is None:
            cuda_available = torch.cuda.is_available()
        if not cuda_available:
            nominal = getattr(hardware, "peak_flops_nominal", None)
            where = f"nominal for {hardware.name}, not measured: no CUDA GPU here"
            return PeakFlops(float(nominal), where) if nominal else PeakFlops(None, where)
        index = int(os.environ.get("LOCAL_RANK", 0)) if device_index is None else device_index
        device = torch.device("cuda", index)
    else:
        device = torch.device("cpu")
    flops, cached = measured_peak(device, dtype, path=path)
    return PeakFlops(flops, f"measured, {dtype_name(dtype)} matmul probe" + (", cached" if cached else ""))


def resolved_hardware(hardware, peak: PeakFlops | None = None):
    """(copy of the HardwareConfig with peak_flops a number or None, the PeakFlops it got)."""
    import dataclasses

    peak = peak or resolve_peak_flops(hardware)
    return dataclasses.replace(hardware, peak_flops=peak.value), peak


__all__ = ["AUTO", "PeakFlops", "cache_key", "cache_path", "check_peak_flops", "device_label", "matmul_rate",
           "measure_peak", "measured_peak", "probe_dtype", "resolve_peak_flops", "resolved_hardware", "synchronize"]
