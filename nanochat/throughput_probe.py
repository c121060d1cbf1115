"""How fast this machine really trains a model of a given depth: a few real steps, measured once and cached.

The one idea: time is measured, never assumed. `measure` builds the real model (`nanochat.gpt.GPT`, from a
stage's `scaling.Plan`) and its real optimizer (`nanochat.optim.build_optimizer`), with the run's precision,
compile setting, device and kernels (attention backend, chunked loss, fp8), and times a few training micro-steps and optimizer steps on random tokens (one-off
build, compile and warm-up seconds are kept apart), plus a few KV-cached decode steps for the evaluations. A
measurement is cached in `<NANOCHAT_BASE_DIR>/throughput_probe.json` under a key that names everything it
depends on (device, torch, precision, compile, context, rows per micro-batch, preset, kernels, depth).

`RateModel` turns two or three probed depths into a rate for any depth: the achieved FLOP/s of a micro-step
(tokens/s x FLOPs/token) is interpolated linearly in depth (held flat beyond the probed ones), the optimizer
step's seconds linearly in the parameter count, the decode step's seconds linearly in depth.
Plain PyTorch; no Lightning.
"""
from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from nanochat.common import NanochatError, get_base_dir, read_json_cache, update_json_cache
from nanochat.probe import synchronize

CACHE_NAME = "throughput_probe.json"
MICRO_STEPS = 5  # timed micro-steps (fwd + bwd) after the warm-up ones (at least; see MIN_SECONDS)
MIN_SECONDS = 2.0  # the micro-step timing runs at least this long: a busy machine's ups and downs average out
WARMUP_STEPS = 2  # untimed: the first steps compile and allocate
DECODE_STEPS = 8  # timed KV-cached decode steps (batch 1)


class DoesNotFit(NanochatError):
    """The probed model ran out of device memory at this device batch."""


@dataclass(frozen=True)
class ProbeSetup:
    """Everything a measurement depends on besides the depth."""

    device: str  # "cpu" or the GPU's name
    torch: str
    precision: str
    compile: bool
    seq_len: int
    device_batch_size: int
    preset: str
    attention: str = "auto"  # hardware.attention (resolved per model: windows decide flex or sdpa)
    loss_chunk: int = 0  # hardware.loss_chunk
    fp8: bool = False  # hardware.fp8

    def key(self, depth: int) -> str:
        kernels = f"|attn={self.attention}|chunk={self.loss_chunk}|fp8={self.fp8}"
        return (f"{self.device}|torch {self.torch}|{self.precision}|compile={self.compile}|T={self.seq_len}|"
                f"B={self.device_batch_size}|{self.preset}{kernels}|d{depth}")


@dataclass(frozen=True)
class ProbeResult:
    depth: int
    flops_per_token: float
    n_params: int
    micro_s: float  # seconds per micro-step (forward + backward of device_batch_size x seq_len tokens)
    optimizer_s: float  # seconds per optimizer step
    decode_s: float  # seconds per generated token (batch 1, KV cache)
    warmup_s: float  # build + compile + warm-up steps, once per process
    tokens_per_micro: int

    @property
    def tok_per_s(self) -> float:
        """Training tokens per second of one device, without the optimizer step."""
        return self.tokens_per_micro / self.micro_s


def setup_for(accelerator: str, precision: str, compile: bool, seq_len: int, device_batch_size: int,
              preset: str, attention: str = "auto", loss_chunk: int = 0, fp8: bool = False) -> ProbeSetup:
    return ProbeSetup(device=device_name(accelerator), torch=torch.__version__.split("+")[0], precision=str(precision),
                      compile=bool(compile), seq_len=int(seq_len), device_batch_size=int(device_batch_size),
                      preset=str(preset), attention=str(attention), loss_chunk=int(loss_chunk), fp8=bool(fp8))


def device_name(accelerator: str) -> str:
    """The device a profile trains on: the GPU's name, or cpu."""
    if accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    if accelerator in ("gpu", "cuda"):
        raise NanochatError(f"hardware accelerator {accelerator} needs a CUDA GPU but none is visible")
    return "cpu"


def _autocast(device: torch.device, precision: str):
    """The autocast context Lightning's precision plugin would open (none for full or cast precision)."""
    if precision == "bf16-mixed":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if precision == "16-mixed":
        return torch.autocast(device.type, dtype=torch.float16)
    return nullcontext()


def measure(plan, setup: ProbeSetup, micro_steps: int = MICRO_STEPS, warmup_steps: int = WARMUP_STEPS,
            decode_steps: int = DECODE_STEPS) -> ProbeResult:
    """Time real training steps of `plan`'s model on random tokens (the weights are thrown away)."""
    from nanochat.gpt import GPT, cast_compute_dtype
    from nanochat.hardware import resolve_attention
    from nanochat.optim import build_optimizer

    device = torch.device("cuda" if setup.device != "cpu" else "cpu")
    t0 = time.perf_counter()
    compute_dtype = cast_compute_dtype(device) if setup.precision == "bf16-cast" else None
    model = GPT.build(plan.model, device=device, compute_dtype=compute_dtype)
    # the run's own kernels, applied as the training module applies them (before compile)
    model.set_loss_chunk(setup.loss_chunk)
    model.set_attention(resolve_attention(setup.attention, plan.model, device.type, training=True).name)
    if setup.fp8:
        from nanochat.fp8 import convert_to_fp8

        convert_to_fp8(model)
    train_model = model
    if setup.compile:
        train_model = torch.compile(model, dynamic=False)
    optimizer = build_optimizer(model, **plan.optimizer_kwargs())
    gen = torch.Generator(device="cpu").manual_seed(0)
    shape = (setup.device_batch_size, setup.seq_len)
    x = torch.randint(0, plan.model.vocab_size, shape, generator=gen).to(device)
    y = torch.randint(0, plan.model.vocab_size, shape, generator=gen).to(device)

    def micro():
        with _autocast(device, setup.precision):
            loss = train_model(x, y)
        loss.backward()

    try:
        for _ in range(warmup_steps):
            micro()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        synchronize(device)
        warmup_s = time.perf_counter() - t0
        micro_s = _mean_seconds(micro, micro_steps, device)
        optimizer_s = _mean_seconds(optimizer.step, 3, device, min_seconds=0.0)
        optimizer.zero_grad(set_to_none=True)
        decode_s = _decode_seconds(model, device, setup.precision, decode_steps)
    except torch.OutOfMemoryError:
        raise DoesNotFit(f"d{plan.depth} does not fit in device memory at {setup.device_batch_size} rows per "
                         f"micro-batch") from None
    finally:
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return ProbeResult(depth=plan.depth, flops_per_token=plan.flops_per_token, n_params=plan.n_params,
                       micro_s=micro_s, optimizer_s=optimizer_s, decode_s=decode_s, warmup_s=warmup_s,
                       tokens_per_micro=shape[0] * shape[1])


def _mean_seconds(fn, n: int, device: torch.device, min_seconds: float = MIN_SECONDS) -> float:
    """Mean seconds of `fn` over at least `n` calls and `min_seconds` (at most 10n calls): a run's wall time is
    a mean too, so the slow steps of a busy machine count as they will in training."""
    calls, t = 0, time.perf_counter()
    while calls < n or (time.perf_counter() - t < min_seconds and calls < 10 * n):
        fn()
        synchronize(device)
        calls += 1
    return (time.perf_counter() - t) / calls


def _decode_seconds(model, device: torch.device, precision: str, steps: int) -> float:
    """Seconds per KV-cached decode step (batch 1): what the generative evaluations spend per answer token."""
    prompt = list(range(1, 17))
    model.eval()
    with torch.no_grad(), _autocast(device, precision):
        for _ in zip(range(2), model.generate(prompt, max_tokens=2, temperature=0.0)):  # warm-up
            pass
        synchronize(device)
        t = time.perf_counter()
        n = sum(1 for _ in model.generate(prompt, max_tokens=steps, temperature=0.0))
        synchronize(device)
    model.train()
    return (time.perf_counter() - t) / max(1, n)


# -----------------------------------------------------------------------------------------------------------
# the cache


def cache_path() -> Path:
    return get_base_dir() / CACHE_NAME


def load_cache(path: Path | None = None) -> dict:
    """Every cached measurement ({} when the cache is missing or damaged: it is measured again)."""
    return read_json_cache(path or cache_path())


def save_result(key: str, result: ProbeResult, path: Path | None = None) -> None:
    """Add one measurement to the cache (other keys survive)."""
    update_json_cache(path or cache_path(), key, asdict(result))


def cached(key: str, path: Path | None = None) -> ProbeResult | None:
    entry = load_cache(path).get(key)
    try:
        return ProbeResult(**entry) if isinstance(entry, dict) else None
    except TypeError:  # written by another version
        return None


def probe(plans: dict, setup: ProbeSetup, path: Path | None = None, measure_fn=measure,
          log=print) -> tuple[dict[int, ProbeResult], float]:
    """{depth: result} for each depth's plan, measured (and cached) where the cache has none; also the seconds
    spent measuring now (0 when everything was cached)."""
    out, spent = {}, 0.0
    for depth, plan in sorted(plans.items()):
        key = setup.key(depth)
        hit = cached(key, path)
        if hit is None:
            t = time.perf_counter()
            hit = measure_fn(plan, setup)
            spent += time.perf_counter() - t
            save_result(key, hit, path)
            how = f"measured in {time.perf_counter() - t:.1f} s"
        else:
            how = "cached"
        out[depth] = hit
        log(f"  probe d{depth}: {hit.tok_per_s:,.0f} tok/s per device, optimizer step {hit.optimizer_s * 1e3:.1f} ms, "
            f"decode {hit.decode_s * 1e3:.1f} ms/token, warm-up {hit.warmup_s:.1f} s ({how})")
    return out, spent


# -----------------------------------------------------------------------------------------------------------
# rates for any depth


class RateModel:
    """Rates at any depth from the probed ones (see the module docstring)."""

    def __init__(self, results: dict[int, ProbeResult]):
        if not results:
            raise NanochatError("the throughput probe measured no depth")
        self.results = dict(sorted(results.items()))
        self.depths = list(self.results)

    @staticmethod
    def _interp(xs: list[float], ys: list[float], x: float) -> float:
        """Piecewise linear through the points, flat beyond the ends."""
        if x <= xs[0]:
            return ys[0]
        if x >= xs[-1]:
            return ys[-1]
        for (x0, y0), (x1, y1) in zip(zip(xs, ys), zip(xs[1:], ys[1:])):
            if x0 <= x <= x1:
                return y0 + (y1 - y0) * (x - x0) / (x1 - x0) if x1 > x0 else y0
        return ys[-1]  # pragma: no cover

    def flops_per_s(self, depth: int) -> float:
        """Achieved FLOP/s of a training micro-step at this depth."""
        rs = self.results.values()
        return self._interp(self.depths, [r.tok_per_s * r.flops_per_token for r in rs], depth)

    def micro_seconds(self, depth: int, flops_per_token: float, tokens: int) -> float:
        """Seconds of forward + backward over `tokens` tokens at this depth."""
        if depth in self.results and self.results[depth].flops_per_token == flops_per_token:
            r = self.results[depth]
            return tokens / r.tok_per_s
        return tokens * flops_per_token / self.flops_per_s(depth)

    def optimizer_seconds(self, n_params: int) -> float:
        rs = sorted(self.results.values(), key=lambda r: r.n_params)
        return max(0.0, self._interp([r.n_params for r in rs], [r.optimizer_s for r in rs], n_params))

    def decode_seconds(self, depth: int) -> float:
        return self._interp(self.depths, [r.decode_s for r in self.results.values()], depth)

    def warmup_seconds(self, depth: int) -> float:
        return self._interp(self.depths, [r.warmup_s for r in self.results.values()], depth)
