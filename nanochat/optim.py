"""Muon + AdamW as ONE torch.optim.Optimizer, and the schedules that drive it.

Each param group carries `kind` ("muon" or "adamw"), so a single optimizer serves every parameter: a trainer's
automatic optimization, gradient accumulation, gradient clipping, LR schedulers (via `initial_lr`) and LR
monitors all work unchanged.

AdamW (embeddings, lm_head, scalars): bias-corrected Adam with decoupled weight decay.

Muon (2-D block matrices): Nesterov momentum on the gradient, then the update is replaced by an approximately
orthogonal matrix of the same shape (5 quintic iterations in bf16), scaled by max(1, rows/cols)^0.5.
- "newton_schulz" (v0): fixed coefficients (3.4445, -4.7750, 2.0315), input normalised by its Frobenius norm.
- "polar_express" (Jan-2026): a different coefficient triple per iteration (Amsel et al., 2025), input
  normalised by 1.02 x its Frobenius norm.
Optional (Jan-2026): variance reduction in the style of NorMuon (a running second moment per row or column of
the orthogonalised update, renormalised to keep the update's Frobenius norm), and cautious weight decay (decay
only the entries where the update and the weight have the same sign).
Optional (July 2026): MuonEq row equilibration before orthogonalising (every row scaled to the root-mean-square
row norm, so the spectrum is better conditioned), the polar-express input divided by 1.01 (not 1.02) x its
norm, and Muon+ renormalisation after it (the update's Frobenius norm set to sqrt(min(rows, cols)), the norm of
an exactly semi-orthogonal matrix). Order per step: momentum -> MuonEq -> orthogonalise -> Muon+ -> variance
reduction -> cautious decay and update.

Under DDP the gradients are already averaged when `step()` runs; every rank computes the same update, so no
extra communication is needed. (Sharded strategies such as FSDP would need a gather before orthogonalising.)
"""
from __future__ import annotations

import math
from collections import defaultdict

import torch
from torch import Tensor

from nanochat.common import NanochatError

# v0 Newton-Schulz quintic coefficients
NS_COEFFS = (3.4445, -4.7750, 2.0315)

# Polar Express coefficients for 5 iterations (safety factor 2e-2, cushion 2), from arXiv:2505.16932
POLAR_EXPRESS_COEFFS = (
    (8.156554524902461, -22.48329292557795, 15.878769915207462),
    (4.042929935166739, -2.808917465908714, 0.5000178451051316),
    (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
    (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
    (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
)

ADAMW_DEFAULTS = dict(betas=(0.8, 0.95), eps=1e-10, weight_decay=0.0)
MUON_DEFAULTS = dict(
    momentum=0.95,
    nesterov=True,
    ns_steps=5,
    orthogonalizer="newton_schulz",
    norm_factor=1.02,  # polar_express only
    ortho_dtype="bf16",  # or "compute": the activations' dtype on the parameters' device (fp32 on CPU)
    row_equilibration=False,
    renormalize=False,
    beta2=None,  # variance reduction off
    weight_decay=0.0,  # cautious weight decay off
    weight_decay_schedule="constant",
)


# -----------------------------------------------------------------------------------------------------------
# orthogonalisation


def newton_schulz(G: Tensor, steps: int = 5, dtype: torch.dtype = torch.bfloat16) -> Tensor:
    """Approximately orthogonalise the last two dims of G (batched): U S' V^T with S' roughly in [0.5, 1.5].

    Runs in `dtype` (bf16). Tall matrices are transposed so the Gram matrix is the small one.
    """
    a, b, c = NS_COEFFS
    X = G.to(dtype)
    tall = G.size(-2) > G.size(-1)
    if tall:
        X = X.mT
    X = X / (X.norm(dim=(-2, -1), keepdim=True) + 1e-7)  # spectral norm <= Frobenius norm <= 1
    for _ in range(steps):
        A = X @ X.mT
        B = b * A + c * (A @ A)
        X = a * X + B @ X
    if tall:
        X = X.mT
    return X


def polar_express(G: Tensor, steps: int = 5, norm_factor: float = 1.02, dtype: torch.dtype = torch.bfloat16) -> Tensor:
    """Polar Express variant: per-iteration coefficients, in `dtype` (bf16), batched over leading dims; the input
    is divided by norm_factor x its Frobenius norm (Jan-2026 1.02, July-2026 1.01)."""
    if steps > len(POLAR_EXPRESS_COEFFS):
        raise ValueError(f"polar_express supports at most {len(POLAR_EXPRESS_COEFFS)} steps, got {steps}")
    X = G.to(dtype)
    X = X / (X.norm(dim=(-2, -1), keepdim=True) * norm_factor + 1e-6)
    tall = G.size(-2) > G.size(-1)
    for a, b, c in POLAR_EXPRESS_COEFFS[:steps]:
        if tall:
            A = X.mT @ X
            X = a * X + X @ (b * A + c * (A @ A))
        else:
            A = X @ X.mT
            X = a * X + (b * A + c * (A @ A)) @ X
    return X


ORTHOGONALIZERS = {"newton_schulz": newton_schulz, "polar_express": polar_express}


def row_equilibrate(X: Tensor) -> Tensor:
    """MuonEq: scale every row of the last two dims to ||X||_F / sqrt(rows) (the root-mean-square row norm), in
    fp32. Tiny rows are floored at 1e-6 so a zero row stays zero."""
    x = X.float()
    target = x.norm(dim=(-2, -1), keepdim=True) / x.size(-2) ** 0.5
    return x * (target / x.norm(dim=-1, keepdim=True).clamp_min(1e-6))


def renormalize(X: Tensor) -> Tensor:
    """Muon+: rescale each matrix (last two dims) to Frobenius norm sqrt(min(rows, cols)), in fp32."""
    x = X.float()
    target = min(x.size(-2), x.size(-1)) ** 0.5
    return x * (target / x.norm(dim=(-2, -1), keepdim=True).clamp_min(1e-6))


def _variance_reduce(update: Tensor, second_moment: Tensor, beta2: float) -> Tensor:
    """NorMuon-style per-row (rows >= cols) or per-column normalisation that keeps the Frobenius norm."""
    red_dim = -1 if update.size(-2) >= update.size(-1) else -2
    u = update.float()
    v_mean = u.square().mean(dim=red_dim, keepdim=True)
    red_size = u.size(red_dim)
    v_norm = (v_mean.sum(dim=(-2, -1), keepdim=True) * red_size).sqrt()
    second_moment.lerp_(v_mean.to(second_moment.dtype), 1.0 - beta2)
    step_size = second_moment.float().clamp_min(1e-10).rsqrt()
    v_norm_new = ((v_mean * red_size) * step_size.square()).sum(dim=(-2, -1), keepdim=True).sqrt()
    return u * (step_size * (v_norm / v_norm_new.clamp_min(1e-10)))


# -----------------------------------------------------------------------------------------------------------
# the optimizer


class MuonAdamW(torch.optim.Optimizer):
    """One optimizer, two update rules, chosen per param group by group["kind"].

    AdamW groups: lr, betas, eps, weight_decay.
    Muon groups: lr, momentum, nesterov, ns_steps, orthogonalizer, norm_factor (polar_express), ortho_dtype
    ("bf16" | "compute"), row_equilibration (MuonEq), renormalize (Muon+), beta2 (None = no variance reduction), weight_decay (cautious; scaled by lr like
    AdamW's), weight_decay_schedule ("constant" | "linear" | "cosine").
    Every group keeps `initial_lr` (and Muon groups `initial_weight_decay`) so schedules multiply them.
    """

    def __init__(self, param_groups: list[dict]):
        if isinstance(param_groups, torch.Tensor) or not all(isinstance(g, dict) for g in param_groups):
            raise ValueError("MuonAdamW takes a list of param-group dicts, each with a 'kind' key")
        super().__init__(param_groups, defaults={})

    def add_param_group(self, param_group: dict) -> None:
        kind = param_group.get("kind")
        if kind not in ("muon", "adamw"):
            raise ValueError(f"param group kind must be 'muon' or 'adamw', got {kind!r}")
        if "lr" not in param_group:
            raise ValueError("every MuonAdamW param group needs an 'lr'")
        for key, value in (MUON_DEFAULTS if kind == "muon" else ADAMW_DEFAULTS).items():
            param_group.setdefault(key, value)
        params = param_group["params"]
        params = [params] if isinstance(params, torch.Tensor) else list(params)
        if kind == "muon":
            bad = [tuple(p.shape) for p in params if p.ndim < 2]
            if bad:
                raise ValueError(f"Muon needs matrices (ndim >= 2); got shapes {bad}")
            if param_group["orthogonalizer"] not in ORTHOGONALIZERS:
                raise ValueError(f"unknown orthogonalizer {param_group['orthogonalizer']!r}")
            param_group.setdefault("initial_weight_decay", param_group["weight_decay"])
        param_group.setdefault("initial_lr", param_group["lr"])
        super().add_param_group(param_group)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            if group["kind"] == "adamw":
                self._step_adamw(group)
            else:
                self._step_muon(group)
        return loss

    def _step_adamw(self, group: dict) -> None:
        lr, (beta1, beta2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
        for p in group["params"]:
            if p.grad is None:
                continue
            state = self.state[p]
            if not state:
                state["step"] = 0
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["step"] += 1
            step = state["step"]
            low = p.dtype in (torch.bfloat16, torch.float16)
            w = p.float() if low else p
            g = p.grad.float() if low else p.grad
            m = state["exp_avg"].float() if low else state["exp_avg"]
            v = state["exp_avg_sq"].float() if low else state["exp_avg_sq"]
            if wd != 0:
                w.mul_(1.0 - lr * wd)
            m.lerp_(g, 1.0 - beta1)
            v.lerp_(g.square(), 1.0 - beta2)
            bias1 = 1.0 - beta1**step
            bias2 = 1.0 - beta2**step
            denom = (v / bias2).sqrt_().add_(eps)
            w.addcdiv_(m, denom, value=-lr / bias1)
            if low:
                p.copy_(w)
                state["exp_avg"].copy_(m)
                state["exp_avg_sq"].copy_(v)

    def _step_muon(self, group: dict) -> None:
        params = [p for p in group["params"] if p.grad is not None]
        if not params:
            return
        momentum, nesterov = group["momentum"], group["nesterov"]
        updates = []
        for p in params:
            state = self.state[p]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            buf = state["momentum_buffer"]
            g = p.grad.to(buf.dtype)
            buf.lerp_(g, 1.0 - momentum)
            updates.append(g.lerp(buf, momentum) if nesterov else buf.clone())  # never touches p.grad
        # orthogonalise same-shaped matrices together (one batched matmul chain per shape)
        by_shape: dict[tuple, list[int]] = defaultdict(list)
        for i, p in enumerate(params):
            by_shape[tuple(p.shape)].append(i)
        name = group["orthogonalizer"]
        extra = {"norm_factor": group["norm_factor"]} if name == "polar_express" else {}
        extra["dtype"] = torch.bfloat16
        if group.get("ortho_dtype", "bf16") == "compute":  # the July-2026 reference: fp32 on CPU, bf16 on GPUs
            from nanochat.gpt import cast_compute_dtype

            extra["dtype"] = cast_compute_dtype(params[0].device)
        for shape, idxs in by_shape.items():
            stacked = torch.stack([updates[i] for i in idxs])
            if group["row_equilibration"]:
                stacked = row_equilibrate(stacked)
            ortho = ORTHOGONALIZERS[name](stacked, group["ns_steps"], **extra)
            if group["renormalize"]:
                ortho = renormalize(ortho)
            for j, i in enumerate(idxs):
                self._apply_muon(params[i], ortho[j], group)

    def _apply_muon(self, p: Tensor, update: Tensor, group: dict) -> None:
        state = self.state[p]
        if group["beta2"] is not None:
            if "second_momentum_buffer" not in state:
                rows, cols = p.shape[-2], p.shape[-1]
                shape = (*p.shape[:-1], 1) if rows >= cols else (*p.shape[:-2], 1, cols)
                state["second_momentum_buffer"] = torch.zeros(shape, dtype=p.dtype, device=p.device)
            update = _variance_reduce(update, state["second_momentum_buffer"], group["beta2"])
        lr = group["lr"] * max(1.0, p.size(-2) / p.size(-1)) ** 0.5
        wd = group["weight_decay"]
        low = p.dtype in (torch.bfloat16, torch.float16)
        w = p.float() if low else p
        u = update.float()
        if wd:
            cautious = (u * w) >= 0  # decay only where the update pushes the weight towards zero
            w.sub_(lr * u + (lr * wd) * w * cautious)
        else:
            w.sub_(lr * u)
        if low:
            p.copy_(w)


# -----------------------------------------------------------------------------------------------------------
# construction


def build_optimizer(model, settings=None, *, d_model: int, lr_scale: float = 1.0, **changes) -> MuonAdamW:
    """MuonAdamW over model.param_groups(), with the reference learning-rate rules.

    `settings` is a nanochat.recipe.OptimSettings (None = the v0 preset's); `changes` replace single fields of it
    (e.g. matrix_lr=0.01). AdamW lrs (embedding, lm_head, value embeddings) are multiplied by (d_model / 768)^-0.5,
    value embeddings' also by value_embed_lr_frac; residual scalars get scalar_lr * 0.01 and x0 scalars scalar_lr.
    Every lr is multiplied by lr_scale (batch scaling x lr_multiplier), except the smear/backout group's: a fixed
    smear_lr x lr_multiplier (the reference scales it neither by width nor by batch). Each AdamW group has its own
    betas and decoupled weight decay (applied as p *= 1 - lr * wd, so the lr schedule moves it too);
    `muon_weight_decay` is Muon's cautious decay, used as given (the Plan scales it).
    """
    from dataclasses import replace

    from nanochat.recipe import V0

    o = replace(settings if settings is not None else V0.optim, **changes)
    if o.muon_weight_decay_schedule not in ("constant", "linear", "cosine"):
        raise NanochatError(f"muon_weight_decay_schedule must be 'constant', 'linear' or 'cosine', got "
                            f"{o.muon_weight_decay_schedule!r}")
    roles = model.param_groups()
    seen = [id(p) for ps in roles.values() for p in ps]
    if len(seen) != len(set(seen)) or len(seen) != len(list(model.parameters())):
        raise NanochatError("model.param_groups() must list every parameter exactly once")
    scale = (d_model / 768) ** -0.5 * lr_scale

    def adamw(name, lr, betas, weight_decay):
        return dict(kind="adamw", name=name, params=roles.get(name, []), lr=lr, betas=tuple(betas),
                    eps=o.adam_eps, weight_decay=weight_decay)

    groups = [
        adamw("lm_head", o.unembedding_lr * scale, o.unembedding_betas, o.adamw_weight_decay),
        adamw("embedding", o.embedding_lr * scale, o.embedding_betas, o.embedding_weight_decay),
        adamw("value_embeds", o.embedding_lr * o.value_embed_lr_frac * scale, o.embedding_betas,
              o.adamw_weight_decay),
        adamw("resid_scalars", o.scalar_lr * 0.01 * lr_scale, o.adam_betas, o.resid_weight_decay),
        adamw("x0_scalars", o.scalar_lr * lr_scale, o.x0_betas, 0.0),
        adamw("smear", o.smear_lr * o.lr_multiplier, o.adam_betas, 0.0),
        dict(kind="muon", name="matrix", params=roles["matrix"], lr=o.matrix_lr * lr_scale, momentum=o.momentum_end,
             ns_steps=o.muon_ns_steps, orthogonalizer=o.muon_orthogonalizer, norm_factor=o.muon_norm_factor,
             ortho_dtype=o.muon_ortho_dtype,
             row_equilibration=o.muon_row_equilibration, renormalize=o.muon_renormalize,
             beta2=o.muon_beta2 or None,  # 0 = off
             weight_decay=o.muon_weight_decay, weight_decay_schedule=o.muon_weight_decay_schedule),
    ]
    return MuonAdamW([g for g in groups if g["params"]])


# -----------------------------------------------------------------------------------------------------------
# schedules


def lr_multiplier(
    step: int, total_steps: int, warmup_steps: int = 0, warmdown_ratio: float = 0.2, final_lr_frac: float = 0.0
) -> float:
    """Linear warmup over warmup_steps, constant, then linear warmdown over the last warmdown_ratio of the
    run to final_lr_frac (v0: 0, 0.2, 0.0; Jan-2026: 0, 0.5, 0.0; later: 40, 0.65, 0.05)."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    warmdown = round(warmdown_ratio * total_steps)
    if warmdown <= 0 or step <= total_steps - warmdown:
        return 1.0
    progress = max(0.0, (total_steps - step) / warmdown)
    return progress + (1.0 - progress) * final_lr_frac


def muon_momentum(step: int, warmup: int = 300, start: float = 0.85, end: float = 0.95, final: float = 0.0,
                  total_steps: int = 0, warmdown_ratio: float = 0.0) -> float:
    """Muon momentum: linear from start to end over the first `warmup` steps, then `end`; with `final` > 0 it
    moves linearly from end to final over the lr warm-down (the last round(warmdown_ratio x total_steps) steps;
    the warm-up wins where the two overlap), as the July-2026 reference does."""
    if step < warmup:
        frac = step / warmup
        return (1.0 - frac) * start + frac * end
    warmdown = round(warmdown_ratio * total_steps)
    if final > 0 and warmdown > 0 and step >= total_steps - warmdown:
        progress = min(1.0, (step - (total_steps - warmdown)) / warmdown)
        return (1.0 - progress) * end + progress * final
    return end


def weight_decay_multiplier(step: int, total_steps: int, schedule: str = "linear") -> float:
    """Muon weight decay over the run: "linear" from 1 at step 0 to 0 at the end (Jan-2026), "cosine"
    1/2 (1 + cos(pi step / total)) (July-2026), "constant" always 1."""
    if schedule == "constant" or total_steps <= 0:
        return 1.0
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / total_steps))
    return max(0.0, 1.0 - step / total_steps)


def update_muon_groups(
    optimizer: torch.optim.Optimizer,
    step: int,
    total_steps: int,
    warmup: int = 300,
    start: float = 0.85,
    end: float = 0.95,
    final: float = 0.0,
    warmdown_ratio: float = 0.0,
) -> None:
    """Set momentum and (scheduled) weight decay of every Muon group for the coming step."""
    momentum = muon_momentum(step, warmup, start, end, final, total_steps, warmdown_ratio)
    for group in optimizer.param_groups:
        if group.get("kind") != "muon":
            continue
        group["momentum"] = momentum
        base = group.get("initial_weight_decay", group.get("weight_decay", 0.0))
        group["weight_decay"] = base * weight_decay_multiplier(
            step, total_steps, group.get("weight_decay_schedule", "constant")
        )


__all__ = [
    "MuonAdamW",
    "build_optimizer",
    "lr_multiplier",
    "muon_momentum",
    "newton_schulz",
    "polar_express",
    "renormalize",
    "row_equilibrate",
    "update_muon_groups",
    "weight_decay_multiplier",
]
