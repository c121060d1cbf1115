"""Causal self-attention of the GPT, and the small pieces it is made of (RMSNorm, RoPE, the casting Linear).

The one idea: training and cached generation run the same maths. `forward` attends over the sequence it is
given (causal, optionally a sliding window of `window` keys back); with a KV cache the new keys and values
are written into the cache first and the queries attend over everything cached so far.

Per layer: q, k, v projections; an optional value embedding mixed into v through a small gate
(`ve_gate_scale * sigmoid(...)`, one value per kv head); RoPE, then QK-norm, then q and k scaled by
`qk_scale` (1 = off); SDPA with grouped-query attention (or, for sliding windows, the kernel chosen in
nanochat.attention_kernels); the output projection.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from nanochat.attention_kernels import attend, check_backend, window_mask  # noqa: F401 (window_mask re-exported)

_TORCH_VERSION = tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:2])
_SDPA_HAS_GQA = _TORCH_VERSION >= (2, 5)


def norm(x: torch.Tensor) -> torch.Tensor:
    """RMSNorm with no learnable parameters."""
    return F.rms_norm(x, (x.size(-1),))


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs (i, i + D/2) of x (B, T, H, D) by the position angles.

    The sign convention is the reference's (a rotation by -theta); only relative angles matter for attention,
    and keeping its convention keeps checkpoints interchangeable.
    """
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat([x1 * cos + x2 * sin, x2 * cos - x1 * sin], dim=-1)


class Linear(nn.Linear):
    """nn.Linear that casts its weight to the input's dtype, and whose constructor leaves the weight
    uninitialised.

    The cast is the "bf16-cast" precision: master weights stay fp32 for the optimizer while the matmuls run in
    the activations' dtype (bf16 when the embeddings are stored in bf16). With fp32 inputs it is a no-op, and
    under autocast the product is the same. `GPT.init_weights()` is the only initialiser, so building a model
    never consumes random draws.
    """

    def reset_parameters(self) -> None:
        pass

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight.to(dtype=x.dtype))


class CausalSelfAttention(nn.Module):
    def __init__(self, config, layer_idx: int, has_ve: bool):
        super().__init__()
        self.layer_idx = layer_idx
        self.n_head = config.n_head
        self.n_kv_head = config.n_kv_head
        self.head_dim = config.head_dim
        self.qk_scale = float(config.qk_scale)
        self.ve_gate_scale = float(config.ve_gate_scale)
        self.backend = "sdpa"  # the uncached kernel (nanochat.attention_kernels); set through GPT.set_attention
        d = config.n_embd
        self.c_q = Linear(d, self.n_head * self.head_dim, bias=False)
        self.c_k = Linear(d, self.n_kv_head * self.head_dim, bias=False)
        self.c_v = Linear(d, self.n_kv_head * self.head_dim, bias=False)
        self.c_proj = Linear(self.n_head * self.head_dim, d, bias=False)
        self.ve_gate = None
        if has_ve:
            self.ve_gate_channels = min(config.ve_gate_channels, d)
            self.ve_gate = Linear(self.ve_gate_channels, self.n_kv_head, bias=False)

    def _mix_value_embed(self, x, v, ve):
        """v + gate * ve, the gate in (0, ve_gate_scale), one value per kv head, read off the first channels."""
        gate = self.ve_gate_scale * torch.sigmoid(self.ve_gate(x[..., : self.ve_gate_channels]))
        B, T = x.shape[:2]
        return v + gate.unsqueeze(-1) * ve.view(B, T, self.n_kv_head, self.head_dim).to(v.dtype)

    def _scale_qk(self, qk: torch.Tensor) -> torch.Tensor:
        return qk if self.qk_scale == 1.0 else qk * self.qk_scale

    def forward(self, x, cos, sin, window: int, ve: torch.Tensor | None = None, kv_cache=None):
        if kv_cache is not None:
            return self._forward_cached(x, cos, sin, window, ve, kv_cache)
        B, T, _ = x.shape
        q = self.c_q(x).view(B, T, self.n_head, self.head_dim)
        k = self.c_k(x).view(B, T, self.n_kv_head, self.head_dim)
        v = self.c_v(x).view(B, T, self.n_kv_head, self.head_dim)
        if ve is not None:
            v = self._mix_value_embed(x, v, ve)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        q, k = self._scale_qk(norm(q)), self._scale_qk(norm(k))  # QK-norm after the rotation
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, H, T, D)
        k, v, kwargs = self._share_kv_heads(k, v)
        y = attend(q, k, v, window, self.backend, **kwargs)
        y = y.transpose(1, 2).contiguous().view(B, T, -1)
        return self.c_proj(y)

    def set_backend(self, name: str) -> None:
        """The uncached forward's kernel, "sdpa" or "flex" (the cached path always uses SDPA)."""
        self.backend = check_backend(name)

    def _share_kv_heads(self, k, v):
        """(k, v, SDPA kwargs) for grouped-query attention: SDPA's own GQA where torch has it, else repeated heads."""
        if self.n_kv_head == self.n_head:
            return k, v, {}
        if _SDPA_HAS_GQA:
            return k, v, {"enable_gqa": True}
        rep = self.n_head // self.n_kv_head
        return k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1), {}

    def _forward_cached(self, x, cos, sin, window: int, ve, cache) -> torch.Tensor:
        """Same maths as forward, shaped for decoding: one matmul makes q, k and v (the cache keeps the
        concatenated weight for the generation), and q and k are rotated and normalised together."""
        B, T, _ = x.shape
        H, Hkv = self.n_head, self.n_kv_head
        qkv = F.linear(x, cache.fused_qkv_weight(self, x.dtype)).view(B, T, H + 2 * Hkv, self.head_dim)
        qk, v = qkv[:, :, : H + Hkv], qkv[:, :, H + Hkv :]
        if ve is not None:
            v = self._mix_value_embed(x, v, ve)
        qk = self._scale_qk(norm(apply_rotary(qk, cos, sin)))  # rotation and QK-norm act on each head alone
        return self.c_proj(self._attend_cached(qk[:, :, :H], qk[:, :, H:], v, window, cache))

    def _attend_cached(self, q, k, v, window: int, cache) -> torch.Tensor:
        """Attention of new queries (B, T, H, D) over the cache after writing k, v into it; (B, T, H * D)."""
        B, T = q.shape[:2]
        keys, values = cache.insert(self.layer_idx, k, v)  # (B, H_kv, pos + T, D)
        end = keys.size(2)
        if T == 1:
            # one query: the window is a slice of the cache, and the query heads that share a kv head become
            # rows of one (B, H_kv, rep, D) query, so no mask is needed unless rows are left-padded
            lo = max(0, end - 1 - window)
            rep = self.n_head // self.n_kv_head
            qg = q.view(B, self.n_kv_head, rep, self.head_dim)
            y = F.scaled_dot_product_attention(
                qg, keys[:, :, lo:], values[:, :, lo:], attn_mask=cache.decode_mask(lo, end)
            )
            return y.reshape(B, 1, -1)
        q = q.transpose(1, 2)
        keys, values, kwargs = self._share_kv_heads(keys, values)
        mask = cache.attention_mask(T, window)
        if mask is None:
            y = F.scaled_dot_product_attention(q, keys, values, is_causal=True, **kwargs)
        else:
            y = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, **kwargs)
        return y.transpose(1, 2).reshape(B, T, -1)
