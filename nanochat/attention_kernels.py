"""The attention kernels of the uncached forward: which implementation runs a causal, optionally windowed layer.

The one idea: a full-context layer is plain causal attention and SDPA's `is_causal` path already reaches the flash
kernel; only a sliding-window layer (window shorter than the sequence) needs a mask, and an explicit boolean mask
pushes SDPA off its flash kernel onto a slower one that reads the whole (T, T) mask. The "flex" backend runs those
layers through `torch.nn.attention.flex_attention` instead, with a block mask (causal and within the window) that
is built once per (T, window, device) and lets the kernel skip every block outside the window.

Backends (`BACKENDS`):
- "sdpa": `F.scaled_dot_product_attention`, an explicit boolean mask for windowed layers.
- "flex": windowed layers through flex_attention (compiled once, lazily, on CUDA: the compiled kernel is what makes
  it fast; eager elsewhere, which materialises the scores and has no backward on CPU), full layers as "sdpa".

Both use the default scale 1/sqrt(head_dim) and grouped-query attention without repeating the kv heads. The
KV-cache path (nanochat.attention `_attend_cached`) always uses SDPA: decoding is one query per step.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from nanochat.common import NanochatError

BACKENDS = ("sdpa", "flex")

# (T, window, device type, device index) -> BlockMask; a handful per run (one per distinct short window and length)
_BLOCK_MASKS: dict = {}
_COMPILED_FLEX = None


def has_flex() -> bool:
    """Whether this torch has flex_attention (2.5 and newer)."""
    try:
        import torch.nn.attention.flex_attention  # noqa: F401
    except ImportError:
        return False
    return True


def check_backend(name: str) -> str:
    if name not in BACKENDS:
        raise NanochatError(f"attention backend {name!r} must be one of: {', '.join(BACKENDS)}")
    if name == "flex" and not has_flex():
        raise NanochatError(f"attention=flex needs torch.nn.attention.flex_attention (torch >= 2.5); "
                            f"this torch is {torch.__version__}")
    return name


def window_mask(t: int, window: int, device) -> torch.Tensor:
    """Boolean (T, T) mask, True where query i may attend key j: 0 <= i - j <= window."""
    pos = torch.arange(t, device=device)
    delta = pos[:, None] - pos[None, :]
    return (delta >= 0) & (delta <= window)


def _sliding_window(window: int):
    def mask_mod(b, h, q_idx, kv_idx):  # the same rule as window_mask
        return (q_idx >= kv_idx) & (q_idx - kv_idx <= window)

    return mask_mod


@torch.compiler.disable  # a miss inside a compiled model builds the mask eagerly (one graph break, once)
def _build_block_mask(t: int, window: int, device: torch.device):
    from torch.nn.attention.flex_attention import create_block_mask

    return create_block_mask(_sliding_window(window), B=None, H=None, Q_LEN=t, KV_LEN=t, device=device)


def block_mask(t: int, window: int, device) -> object:
    """The cached flex BlockMask of a causal window of `window` keys back over a sequence of t tokens."""
    device = torch.device(device)
    key = (t, window, device.type, device.index)
    mask = _BLOCK_MASKS.get(key)
    if mask is None:
        mask = _BLOCK_MASKS[key] = _build_block_mask(t, window, device)
    return mask


def _flex():
    """flex_attention, compiled on first use (compiling at import would cost every process seconds)."""
    global _COMPILED_FLEX
    if _COMPILED_FLEX is None:
        from torch.nn.attention.flex_attention import flex_attention

        _COMPILED_FLEX = torch.compile(flex_attention, dynamic=False)
    return _COMPILED_FLEX


def flex_window_attention(q, k, v, window: int) -> torch.Tensor:
    """Causal attention within `window` keys back through flex_attention; q (B, H, T, D), k and v (B, H_kv, T, D)."""
    from torch.nn.attention.flex_attention import flex_attention

    if q.device.type != "cuda" and torch.is_grad_enabled() and (q.requires_grad or k.requires_grad):
        raise NanochatError(f"attention=flex cannot train on {q.device.type}: flex_attention has a backward only "
                            "on CUDA; use hardware.attention=sdpa (or auto)")
    mask = block_mask(q.size(2), window, q.device)
    gqa = k.size(1) != q.size(1)
    if torch.compiler.is_compiling():  # inside a compiled model: dynamo turns the call into the fused kernel
        return flex_attention(q, k, v, block_mask=mask, enable_gqa=gqa)
    if q.device.type == "cuda":
        return _flex()(q, k, v, block_mask=mask, enable_gqa=gqa)
    import warnings

    with warnings.catch_warnings():  # "called without torch.compile": known, and only for correctness off CUDA
        warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
        return flex_attention(q, k, v, block_mask=mask, enable_gqa=gqa)


def attend(q, k, v, window: int, backend: str = "sdpa", **sdpa_kwargs) -> torch.Tensor:
    """Causal self-attention looking back at most `window` keys; q (B, H, T, D), k and v (B, H_kv, T, D).

    sdpa_kwargs go to SDPA (`enable_gqa`); flex infers grouped-query attention from the shapes.
    """
    t = q.size(2)
    if window >= t:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, **sdpa_kwargs)
    if backend == "flex":
        return flex_window_attention(q, k, v, window)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=window_mask(t, window, q.device), **sdpa_kwargs)


def prepare(backend: str, seq_len: int, windows, device) -> None:
    """Build the block masks a model will need before any compile traces it (flex only; sdpa needs nothing)."""
    if backend != "flex" or torch.device(device).type == "meta":
        return
    for window in sorted(set(windows)):
        if window < seq_len:
            block_mask(seq_len, window, device)
