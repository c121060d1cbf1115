"""How much memory one training micro-step of a GPT needs, counted tensor by tensor before anything is allocated.

The one idea: peak training memory = what lives for the whole run (weights, gradients, optimizer state) + what the
forward pass saves for the backward pass (activations, proportional to device_batch x seq_len) + the largest
short-lived temporaries (the fp32 logits' gradients, a fresh gradient before it is added into `.grad`, the Muon
update buffers). Each term is derived from the same shapes `nanochat.gpt` builds, per saved tensor:

  attention  the residual stream saved by the pre-norm, the normed input of c_q/c_k/c_v, the rotated q/k saved by
             QK-norm, the normed q/k and v saved by SDPA, its output (c_proj's input) and log-sum-exp
  MLP        the normed input of c_fc, relu's output (its own backward) and the square (c_proj's input): 2 x 4d
  logits     fp32: tanh's output (soft cap) and log_softmax's output are saved; their gradients are the peak.
             With a loss chunk (nanochat.chunked_loss) only the gradients of the lm_head's input and weight wait
             for the backward, and the logit temporaries are one chunk's (chunk x vocab) instead

`estimate_training_memory` works without torch allocations (pure arithmetic), so it can size a batch for a GPU
that is not there. `measure_peak` counts the live tensor bytes of a real run on any device (a dispatch mode that
sees every allocation) and is what the estimate is validated against.
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any, Callable

from nanochat.common import NanochatError
from nanochat.gpt import GPT, GPTConfig, has_value_embed, window_sizes

GPT_ROTARY_OVERSIZE = GPT.ROTARY_OVERSIZE

FP32_PRECISIONS = ("32-true", "32", "64-true", "64")
MIXED_PRECISIONS = ("bf16-mixed", "16-mixed", "transformer-engine")
HALF_PRECISIONS = ("bf16-true", "16-true", "bf16", "16")
CAST_PRECISIONS = ("bf16-cast",)  # no autocast: fp32 master weights cast to bf16 activations by each Linear
OPTIMIZERS = ("muon_adamw", "adamw")

# torch.compile (Inductor) recomputes cheap pointwise ops in the backward instead of saving their outputs:
# relu^2 is recomputed from c_fc's output, rotary + QK-norm from q/k, the soft cap from the raw logits.


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes per category for one device; `total` is the estimated peak."""

    weights: int
    grads: int
    optimizer: int
    activations: int  # saved for the backward pass at the end of the forward (all layers + logits)
    workspace: int  # largest temporaries on top of the activations (logit gradients, a fresh weight gradient)
    step_workspace: int  # temporaries of optimizer.step() (activations are freed by then)
    device_batch_size: int
    seq_len: int
    precision: str
    compile: bool
    optimizer_name: str
    per_layer_activations: int  # one block's saved tensors (the average over layers)
    logits_activations: int
    loss_chunk: int = 0  # tokens per chunk of the fused lm_head + loss (0 = full logits)

    @property
    def static(self) -> int:
        """Memory that does not depend on the batch: weights + gradients + optimizer state."""
        return self.weights + self.grads + self.optimizer

    @property
    def total(self) -> int:
        return self.static + max(self.activations + self.workspace, self.step_workspace)

    def describe(self) -> str:
        lines = [
            f"memory estimate: device batch {self.device_batch_size} x {self.seq_len:,} tokens, {self.precision}"
            f"{', compiled' if self.compile else ''}, {self.optimizer_name}",
            f"  weights       {gib(self.weights)}",
            f"  gradients     {gib(self.grads)}",
            f"  optimizer     {gib(self.optimizer)}",
            f"  activations   {gib(self.activations)} ({gib(self.per_layer_activations)} per layer, "
            f"logits {gib(self.logits_activations)}"
            f"{f', loss in chunks of {self.loss_chunk:,} tokens' if self.loss_chunk else ''})",
            f"  workspace     {gib(max(self.workspace, self.step_workspace - self.activations))}",
            f"  total (peak)  {gib(self.total)}",
        ]
        return "\n".join(lines)


def gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 * 0.1 else f"{n / 2**20:.1f} MiB"


def _dtypes(precision: str) -> tuple[int, int, int]:
    """(bytes per weight/grad/optimizer value, bytes per matmul activation, bytes of the residual stream)."""
    p = str(precision)
    if p in FP32_PRECISIONS:
        w = 8 if p.startswith("64") else 4
        return w, w, w
    if p in MIXED_PRECISIONS:
        return 4, 2, 4  # fp32 master weights and residual stream; matmuls (and what they save) in half
    if p in HALF_PRECISIONS:
        return 2, 2, 2
    if p in CAST_PRECISIONS:
        return 4, 2, 2  # (bf16 embeddings make the weights a little smaller; counted as fp32 to stay on the safe side)
    raise NanochatError(f"unknown precision {precision!r}; use one of "
                        f"{', '.join(FP32_PRECISIONS + MIXED_PRECISIONS + HALF_PRECISIONS + CAST_PRECISIONS)}")


def _param_counts(cfg: GPTConfig) -> dict[str, Any]:
    from nanochat.scaling import count_params_breakdown

    c = count_params_breakdown(cfg)
    d, V, hd = cfg.n_embd, cfg.vocab_size, cfg.head_dim
    q, kv = cfg.n_head * hd, cfg.n_kv_head * hd
    # every 2-D block matrix, by shape (Muon orthogonalises same-shaped matrices together)
    shapes: dict[tuple[int, int], int] = {(q, d): cfg.n_layer, (kv, d): 2 * cfg.n_layer,
                                          (d, q): cfg.n_layer, (4 * d, d): cfg.n_layer, (d, 4 * d): cfg.n_layer}
    if cfg.value_embeds:
        n_ve = sum(has_value_embed(i, cfg.n_layer) for i in range(cfg.n_layer))
        gate = (cfg.n_kv_head, min(cfg.ve_gate_channels, d))
        shapes[gate] = shapes.get(gate, 0) + n_ve
    merged: dict[tuple[int, int], int] = {}
    for shape, n in shapes.items():
        merged[shape] = merged.get(shape, 0) + n
    c["matrix_shapes"] = merged
    c["embedding_largest"] = V * d
    return c


def _layer_activation_bytes(cfg: GPTConfig, tokens: int, window: int, layer: int, act: int, res: int,
                            mixed: bool, compile: bool) -> int:
    """Bytes one block saves for the backward pass (see the module docstring for the list)."""
    d, hd = cfg.n_embd, cfg.head_dim
    q, kv, F = cfg.n_head * hd, cfg.n_kv_head * hd, 4 * d
    ve = cfg.value_embeds and has_value_embed(layer, cfg.n_layer)
    per_token = 2 * res * d  # residual stream saved by the two pre-norms (block input, after attention)
    if cfg.resid_scalars:
        per_token += res * d  # x * resid_lambda saves the previous block's output as well
    # normed inputs of the q/k/v projections: one tensor, or one half-precision cast per projection under autocast
    per_token += (3 if mixed and not compile else 1) * act * d
    if not compile:
        per_token += act * (q + kv)  # rotated q, k saved by QK-norm
    per_token += act * (q + 2 * kv) + act * q + 4 * cfg.n_head  # SDPA: q, k, v, output; fp32 log-sum-exp
    if ve:
        per_token += act * kv + 4 * cfg.n_kv_head  # the value embedding (gate product) and the gate
    per_token += act * d  # normed MLP input
    per_token += (1 if compile else 2) * act * F  # relu output (+ its square in eager)
    total = per_token * tokens
    if window < cfg.sequence_len:
        total += cfg.sequence_len ** 2  # the boolean window mask kept by SDPA (one per short-window layer)
    return total


def estimate_training_memory(plan_or_config, device_batch_size: int | None = None, seq_len: int | None = None,
                             precision: str = "32-true", compile: bool = False, optimizer: str = "muon_adamw",
                             muon_beta2: float | None = None, world_size: int | None = None,
                             loss_chunk: int = 0) -> MemoryEstimate:
    """Estimated peak bytes of training on one device with this micro-batch (a `scaling.Plan` or a `GPTConfig`).

    From a Plan, the device batch, sequence length and Muon's beta2 default to the plan's. Gradients are counted
    as resident (gradient accumulation keeps them between micro-steps). With world_size > 1 (DDP) the gradient
    buckets add one more copy of the gradients. loss_chunk > 0: the training loss is computed that many tokens
    at a time (`GPT.set_loss_chunk`), without the full logits.
    """
    if hasattr(plan_or_config, "model") and hasattr(plan_or_config, "total_batch_tokens"):
        plan = plan_or_config
        cfg: GPTConfig = plan.model
        device_batch_size = plan.device_batch_size if device_batch_size is None else device_batch_size
        seq_len = plan.seq_len if seq_len is None else seq_len
        muon_beta2 = (plan.optim.muon_beta2 or None) if muon_beta2 is None else muon_beta2
        world_size = plan.world_size if world_size is None else world_size
    elif isinstance(plan_or_config, GPTConfig):
        cfg = plan_or_config
        seq_len = cfg.sequence_len if seq_len is None else seq_len
    else:
        raise NanochatError(f"estimate_training_memory needs a Plan or a GPTConfig, got {type(plan_or_config).__name__}")
    if not isinstance(device_batch_size, int) or device_batch_size <= 0:
        raise NanochatError(f"device_batch_size must be a positive integer, got {device_batch_size!r}")
    if not isinstance(seq_len, int) or seq_len <= 0:
        raise NanochatError(f"seq_len must be a positive integer, got {seq_len!r}")
    if isinstance(loss_chunk, bool) or not isinstance(loss_chunk, int) or loss_chunk < 0:
        raise NanochatError(f"loss_chunk must be a whole number of tokens >= 0, got {loss_chunk!r}")
    if optimizer not in OPTIMIZERS:
        raise NanochatError(f"unknown optimizer {optimizer!r}; use one of {', '.join(OPTIMIZERS)}")
    if seq_len != cfg.sequence_len:
        from dataclasses import replace

        cfg = replace(cfg, sequence_len=seq_len)
    wb, act, res = _dtypes(precision)
    mixed = str(precision) in MIXED_PRECISIONS + CAST_PRECISIONS  # both keep half copies of the matmul weights
    counts = _param_counts(cfg)
    n_params = counts["total"]
    matrix = counts["transformer_matrices"]
    adamw_params = n_params - matrix if optimizer == "muon_adamw" else n_params
    d, V, B, T = cfg.n_embd, cfg.vocab_size, device_batch_size, seq_len
    tokens = B * T

    weights = n_params * wb + 2 * 4 * GPT_ROTARY_OVERSIZE * T * cfg.head_dim // 2  # + rotary cos/sin tables
    if mixed:
        weights += (matrix + counts["lm_head"]) * act  # autocast's half copies of the matmul weights (cached)
    grads = n_params * wb
    if world_size and world_size > 1:
        grads += n_params * wb  # DDP's all-reduce buckets hold a second copy
    opt_state = 2 * adamw_params * wb
    if optimizer == "muon_adamw":
        opt_state += matrix * wb  # momentum buffer
        if muon_beta2 is not None:  # NorMuon second moment: one value per row (or column) of every matrix
            opt_state += sum(n * min(r, c) * wb for (r, c), n in counts["matrix_shapes"].items())

    # activations: embedding + blocks + final norm + logits
    layers = [_layer_activation_bytes(cfg, tokens, w, i, act, res, mixed, compile)
              for i, w in enumerate(window_sizes(cfg))]
    embed = res * d * tokens * (2 if cfg.resid_scalars else 1)  # embedding output (norm) (+ x0 for the scalars)
    final = (res + act) * d * tokens  # final residual (norm) and the normed lm_head input
    logit_bytes = 4 * V * tokens  # logits and everything after them are fp32
    if loss_chunk > 0:
        # the same kernels compiled or not: the forward leaves the gradients of h (matmul dtype) and of W (fp32);
        # one chunk holds its matmul output (+ fp32 copy), the capped logits, logsumexp's temporary and the
        # gradient cast back, then W's chunk gradient (+ its fp32 copy)
        c = min(loss_chunk, tokens)
        half = act != 4
        saved_logits = act * d * tokens + 4 * V * d
        logit_temp = (3 * 4 + (2 * act if half else 0)) * c * V + (act + 4 if half else 4) * V * d
    elif compile:
        # the cast, soft cap and cross-entropy fuse into kernels that keep only lm_head's output (and a small
        # log-sum-exp); the backward writes one gradient of the same size
        saved_logits = act * V * tokens
        logit_temp = act * V * tokens
    else:
        saved_logits = 2 * logit_bytes + (act * V * tokens if act != 4 else 0)  # tanh out, log_softmax out
        logit_temp = 2 * logit_bytes  # gradient of log_softmax and of its input, alive together
    activations = sum(layers) + embed + final + saved_logits
    # a new gradient is materialised before it is added into an existing .grad: the largest parameter's worth
    grad_temp = wb * max(counts["embedding_largest"], max((r * c for r, c in counts["matrix_shapes"]), default=0))
    workspace = max(logit_temp, grad_temp)

    # optimizer.step(): Muon keeps one fp32 update per matrix, stacks each shape group (fp32 + bf16 copies);
    # AdamW builds a denominator the size of its largest parameter
    step_ws = 0
    if optimizer == "muon_adamw":
        largest_group = max(n * r * c for (r, c), n in counts["matrix_shapes"].items())
        step_ws = 4 * matrix + (4 + 2 + 2 * 2) * largest_group
    step_ws = max(step_ws, 4 * counts["embedding_largest"] * 2)

    return MemoryEstimate(
        weights=int(weights), grads=int(grads), optimizer=int(opt_state), activations=int(activations),
        workspace=int(workspace), step_workspace=int(step_ws), device_batch_size=B, seq_len=T,
        precision=str(precision), compile=bool(compile), optimizer_name=optimizer,
        per_layer_activations=int(sum(layers) / len(layers)), logits_activations=int(saved_logits),
        loss_chunk=loss_chunk,
    )


# -----------------------------------------------------------------------------------------------------------
# measurement


class _LiveTensorMeter:
    """Counts the bytes of every tensor storage created while active and still alive; records the peak."""

    def __init__(self):
        from torch.utils._python_dispatch import TorchDispatchMode
        from torch.utils.weak import WeakIdKeyDictionary

        meter = self
        self.current = 0
        self.peak = 0
        self._seen = WeakIdKeyDictionary()

        class _Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                meter._track(out)
                return out

        self.mode = _Mode()

    def _free(self, nbytes: int) -> None:
        self.current -= nbytes

    def _track(self, out) -> None:
        import torch
        from torch.utils._pytree import tree_leaves

        for t in tree_leaves(out):
            if not isinstance(t, torch.Tensor) or t.device.type == "meta":
                continue
            st = t.untyped_storage()
            if st in self._seen:
                continue
            nbytes = st.nbytes()
            self._seen[st] = nbytes
            self.current += nbytes
            self.peak = max(self.peak, self.current)
            weakref.finalize(st, self._free, nbytes)

    def __enter__(self):
        self.mode.__enter__()
        return self

    def __exit__(self, *exc):
        return self.mode.__exit__(*exc)


def measure_peak(fn: Callable[[], Any]) -> int:
    """Peak bytes of tensor storage alive at once while `fn()` runs, counting only tensors it creates.

    Works on any device (CPU included, where torch keeps no allocator statistics); slow, for small models.
    """
    import gc

    gc.collect()
    meter = _LiveTensorMeter()
    with meter:
        fn()
    gc.collect()
    return meter.peak


__all__ = ["MemoryEstimate", "estimate_training_memory", "gib", "measure_peak"]
