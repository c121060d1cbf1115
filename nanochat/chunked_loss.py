"""The lm_head and the soft-capped cross-entropy fused over chunks of tokens, so training never holds the full
(tokens x vocab) logits.

The one idea: the loss only needs, per token, the log-sum-exp of its capped logits and the logit of its target,
and the gradients only need softmax(z) - onehot(target) one chunk at a time. So the tokens are taken `chunk` at
a time: logits = h_c @ W^T (in the compute dtype, as `nanochat.attention.Linear` does), then fp32, then
cap * tanh(logits / cap), then the chunk's losses; the (chunk x vocab) temporaries are freed before the next
chunk. Peak logit memory falls from several (tokens x vocab) fp32 tensors to a few (chunk x vocab) ones.

Two ways to get the gradients, chosen per call:
- 'mean' and 'sum' with gradients wanted (training): the gradients of h and W are computed in the forward pass,
  chunk by chunk, and the backward pass only scales them by the incoming scalar. Three matmuls per chunk, as
  the plain path does; what waits for the backward is one h-sized and one W-sized tensor.
- 'none', or no gradients wanted: the forward keeps each token's log-sum-exp, and the backward (if any)
  recomputes each chunk's logits (a fourth matmul), since a per-token incoming gradient cannot be folded in
  before it is known.

Numerics follow the plain path (`GPT.forward` without a chunk): the matmul in h's dtype (or autocast's), the
cap and the loss in fp32, gradients cast back to the matmul dtype before the two gradient matmuls; only the
weight gradient is summed over chunks in fp32. Reductions are those of F.cross_entropy with ignore_index=-1.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from nanochat.common import NanochatError

REDUCTIONS = ("mean", "sum", "none")


def _matmul_dtype(h: torch.Tensor) -> torch.dtype:
    """The dtype F.linear would compute in here: autocast's when it is on for h's device, else h's own."""
    kind = h.device.type
    if torch.is_autocast_enabled(kind):
        return torch.get_autocast_dtype(kind)
    return h.dtype


def _chunk_logits(h_c: torch.Tensor, w: torch.Tensor, cap: float) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(capped fp32 logits z, tanh(raw / cap) or None without a cap) for one chunk; z and t are fresh tensors."""
    raw = F.linear(h_c, w).float()
    if cap <= 0:
        return raw, None
    t = raw.div_(cap).tanh_()  # in place: raw is a fresh tensor and nothing here records autograd history
    return t * cap, t


def _logit_grad(z: torch.Tensor, t: torch.Tensor | None, lse: torch.Tensor, tgt: torch.Tensor,
                valid: torch.Tensor, scale: torch.Tensor, cap: float) -> torch.Tensor:
    """d loss / d raw logits for one chunk, in place over z: (softmax(z) - onehot) * scale * (1 - t^2)."""
    p = z.sub_(lse[:, None]).exp_()
    rows = torch.arange(p.size(0), device=p.device)
    p[rows, tgt.clamp(min=0)] -= 1.0
    p.mul_((scale * valid)[:, None])
    if cap > 0:
        p.mul_(t.square_().neg_().add_(1.0))
    return p


class _ChunkedSoftcapCE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, weight, targets, cap: float, chunk: int, reduction: str, grads_now: bool):
        n = h.size(0)
        mdtype = _matmul_dtype(h)
        with torch.autocast(h.device.type, enabled=False):
            hm, w = h.to(mdtype), weight.to(mdtype)
            valid = targets >= 0
            count = valid.sum()
            # 'mean' divides by the number of supervised targets (0 gives nan, as F.cross_entropy does)
            scale = 1.0 / count.float() if reduction == "mean" else torch.ones((), device=h.device)
            losses = torch.empty(n, dtype=torch.float32, device=h.device)
            lse_all = None if grads_now else torch.empty(n, dtype=torch.float32, device=h.device)
            grad_h = torch.empty_like(hm) if grads_now else None
            grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=h.device) if grads_now else None
            for s in range(0, n, chunk):
                h_c, tgt, ok = hm[s:s + chunk], targets[s:s + chunk], valid[s:s + chunk]
                z, t = _chunk_logits(h_c, w, cap)
                lse = torch.logsumexp(z, dim=-1)
                picked = z.gather(1, tgt.clamp(min=0)[:, None]).squeeze(1)
                losses[s:s + chunk] = (lse - picked) * ok
                if grads_now:
                    g = _logit_grad(z, t, lse, tgt, ok, scale.expand(ok.shape), cap).to(mdtype)
                    grad_h[s:s + chunk] = g @ w
                    grad_w += (g.t() @ h_c).float()
                else:
                    lse_all[s:s + chunk] = lse
                del z, t
        ctx.cap, ctx.chunk, ctx.reduction, ctx.grads_now = cap, chunk, reduction, grads_now
        ctx.h_dtype, ctx.w_dtype, ctx.mdtype = h.dtype, weight.dtype, mdtype
        if grads_now:
            ctx.save_for_backward(grad_h, grad_w)
        else:
            ctx.save_for_backward(h, weight, targets, lse_all)
        if reduction == "none":
            return losses
        total = losses.sum()
        return total * scale if reduction == "mean" else total

    @staticmethod
    def backward(ctx, grad_out):
        if ctx.grads_now:
            grad_h, grad_w = ctx.saved_tensors
            g = grad_out.float()
            return ((grad_h * g).to(ctx.h_dtype), (grad_w * g).to(ctx.w_dtype), None, None, None, None, None)
        h, weight, targets, lse_all = ctx.saved_tensors
        cap, chunk, mdtype = ctx.cap, ctx.chunk, ctx.mdtype
        n = h.size(0)
        with torch.autocast(h.device.type, enabled=False):
            hm, w = h.to(mdtype), weight.to(mdtype)
            valid = targets >= 0
            if ctx.reduction == "none":
                scale = grad_out.float()
            elif ctx.reduction == "mean":
                scale = (grad_out.float() / valid.sum().float()).expand(n)
            else:
                scale = grad_out.float().expand(n)
            grad_h = torch.empty_like(hm) if ctx.needs_input_grad[0] else None
            grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=h.device) if ctx.needs_input_grad[1] \
                else None
            for s in range(0, n, chunk):
                h_c = hm[s:s + chunk]
                z, t = _chunk_logits(h_c, w, cap)
                g = _logit_grad(z, t, lse_all[s:s + chunk], targets[s:s + chunk], valid[s:s + chunk],
                                scale[s:s + chunk], cap).to(mdtype)
                if grad_h is not None:
                    grad_h[s:s + chunk] = g @ w
                if grad_w is not None:
                    grad_w += (g.t() @ h_c).float()
                del z, t, g
        return (None if grad_h is None else grad_h.to(ctx.h_dtype),
                None if grad_w is None else grad_w.to(ctx.w_dtype), None, None, None, None, None)


def chunked_cross_entropy(h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, softcap: float = 0.0,
                          chunk: int = 4096, reduction: str = "mean") -> torch.Tensor:
    """F.cross_entropy(cap * tanh((h @ weight^T).float() / cap), targets, ignore_index=-1, reduction=reduction)
    without the full logits. h (..., d) hidden states, weight (V, d), targets (...) token ids (-1 = ignore);
    softcap <= 0 means no cap. 'none' returns targets' shape with zeros at ignored positions.
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"loss_reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    if not isinstance(chunk, int) or chunk <= 0:
        raise NanochatError(f"the loss chunk must be a positive number of tokens, got {chunk!r}")
    if h.shape[:-1] != targets.shape:
        raise NanochatError(f"hidden states {tuple(h.shape)} do not match targets {tuple(targets.shape)}")
    shape = targets.shape
    h2 = h.reshape(-1, h.size(-1))
    cap = float(softcap) if softcap and softcap > 0 else 0.0
    wants_grad = torch.is_grad_enabled() and (h.requires_grad or weight.requires_grad)
    grads_now = wants_grad and reduction != "none"
    out = _ChunkedSoftcapCE.apply(h2, weight, targets.reshape(-1), cap, chunk, reduction, grads_now)
    return out.view(shape) if reduction == "none" else out


__all__ = ["chunked_cross_entropy"]
