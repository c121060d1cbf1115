"""The GPT model: a small, modern decoder-only Transformer.

Baseline ("v0") architecture:
- rotary position embeddings (no learned positions), base configurable
- RMSNorm without learnable parameters: after the token embedding, before every sub-layer (pre-norm)
  and before the lm_head
- QK-norm (RMSNorm of queries and keys after the rotation)
- grouped-query attention (n_kv_head divides n_head) through PyTorch SDPA, causal
- MLP with 4x expansion and relu(x)^2, no biases anywhere, untied embedding / unembedding
- logits soft-capped as cap * tanh(logits / cap), computed in fp32

Optional later features (all off by default, switched on by presets):
- sliding-window attention from a pattern string such as "SSSL" (tiled over layers, last layer always full)
- value embeddings on alternating layers, mixed into the values through a small input-dependent gate
- per-layer residual scalars: x <- resid_lambda[i] * x + x0_lambda[i] * x0 before every block

Build models with `GPT.build(config, device)`: shapes on the meta device, storage on the target device, then
`init_weights()`, whose random draws (the only ones) follow the reference's order, so a seed reproduces its weights.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from nanochat.common import NanochatError

_TORCH_VERSION = tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:2])
_SDPA_HAS_GQA = _TORCH_VERSION >= (2, 5)


@dataclass
class GPTConfig:
    sequence_len: int = 2048
    vocab_size: int = 65536
    n_layer: int = 12
    n_head: int = 6  # query heads
    n_kv_head: int = 6  # key/value heads (GQA when smaller than n_head)
    n_embd: int = 768
    rope_base: float = 10000.0
    logit_softcap: float = 15.0  # <= 0 disables the cap
    # Sliding windows: pattern of "S" (short) and "L" (long = full context) tiled across layers; the last
    # layer is always "L". None means full attention everywhere (v0).
    window_pattern: str | None = None
    short_window_frac: float = 0.25  # "S" window = this fraction of sequence_len (Jan-2026 nanochat: 0.5)
    # Value embeddings on alternating layers (the last layer always has one), gated per kv head.
    value_embeds: bool = False
    ve_gate_channels: int = 32  # the gate reads the first this-many channels of the block input
    # Per-layer learnable residual scalars (resid_lambdas init 1.0, x0_lambdas init x0_init).
    resid_scalars: bool = False
    x0_init: float = 0.1
    # Weight initialisation: "v0" (fan-in scaled normal, zero lm_head) or "jan2026" (uniform blocks,
    # lm_head N(0, 0.001)). Both zero the attention and MLP output projections.
    init: str = "v0"

    def __post_init__(self):
        problems = []
        if self.n_head <= 0 or self.n_embd % self.n_head != 0:
            problems.append(f"n_embd ({self.n_embd}) must be a positive multiple of n_head ({self.n_head})")
        elif (self.n_embd // self.n_head) % 2 != 0:
            problems.append(f"head_dim = n_embd / n_head = {self.n_embd // self.n_head} must be even for RoPE")
        if self.n_kv_head <= 0 or self.n_kv_head > self.n_head or self.n_head % self.n_kv_head != 0:
            problems.append(f"n_kv_head ({self.n_kv_head}) must divide n_head ({self.n_head})")
        if self.window_pattern is not None:
            pattern = self.window_pattern.upper()
            if not pattern or any(c not in "SL" for c in pattern):
                problems.append(f"window_pattern {self.window_pattern!r} may only contain the letters S and L")
        if not 0.0 < self.short_window_frac <= 1.0:
            problems.append(f"short_window_frac ({self.short_window_frac}) must be in (0, 1]")
        if self.init not in ("v0", "jan2026"):
            problems.append(f"init {self.init!r} must be 'v0' or 'jan2026'")
        if self.n_layer <= 0 or self.sequence_len <= 0 or self.vocab_size <= 0:
            problems.append("n_layer, sequence_len and vocab_size must be positive")
        if problems:
            raise NanochatError("invalid model config: " + "; ".join(problems))

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head


def has_value_embed(layer_idx: int, n_layer: int) -> bool:
    """Alternating layers carry a value embedding, and the last layer always does."""
    return layer_idx % 2 == (n_layer - 1) % 2


def window_sizes(config: GPTConfig) -> list[int]:
    """Attention window (in tokens, counting back from the query) for every layer."""
    long_window = config.sequence_len
    if config.window_pattern is None:
        return [long_window] * config.n_layer
    short_window = max(1, int(config.sequence_len * config.short_window_frac))
    pattern = config.window_pattern.upper()
    sizes = [short_window if pattern[i % len(pattern)] == "S" else long_window for i in range(config.n_layer)]
    sizes[-1] = long_window
    return sizes


def norm(x: torch.Tensor) -> torch.Tensor:
    """RMSNorm with no learnable parameters."""
    return F.rms_norm(x, (x.size(-1),))


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs (i, i + D/2) of x (B, T, H, D) by the position angles."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat([x1 * cos + x2 * sin, x2 * cos - x1 * sin], dim=-1)


def _window_mask(t: int, window: int, device) -> torch.Tensor:
    """Boolean (T, T) mask, True where query i may attend key j: 0 <= i - j <= window."""
    pos = torch.arange(t, device=device)
    delta = pos[:, None] - pos[None, :]
    return (delta >= 0) & (delta <= window)


class Linear(nn.Linear):
    """nn.Linear whose constructor leaves the weight uninitialised: `GPT.init_weights()` is the only
    initialiser, so building a model never consumes random draws (and never wastes time on kaiming init)."""

    def reset_parameters(self) -> None:
        pass


class Embedding(nn.Embedding):
    """nn.Embedding whose constructor leaves the table uninitialised (see `Linear`)."""

    def reset_parameters(self) -> None:
        pass


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.n_head = config.n_head
        self.n_kv_head = config.n_kv_head
        self.head_dim = config.head_dim
        d = config.n_embd
        self.c_q = Linear(d, self.n_head * self.head_dim, bias=False)
        self.c_k = Linear(d, self.n_kv_head * self.head_dim, bias=False)
        self.c_v = Linear(d, self.n_kv_head * self.head_dim, bias=False)
        self.c_proj = Linear(self.n_head * self.head_dim, d, bias=False)
        self.ve_gate = None
        if config.value_embeds and has_value_embed(layer_idx, config.n_layer):
            self.ve_gate_channels = min(config.ve_gate_channels, d)
            self.ve_gate = Linear(self.ve_gate_channels, self.n_kv_head, bias=False)

    def forward(self, x, cos, sin, window: int, ve: torch.Tensor | None = None, kv_cache=None):
        if kv_cache is not None:
            return self._forward_cached(x, cos, sin, window, ve, kv_cache)
        B, T, _ = x.shape
        q = self.c_q(x).view(B, T, self.n_head, self.head_dim)
        k = self.c_k(x).view(B, T, self.n_kv_head, self.head_dim)
        v = self.c_v(x).view(B, T, self.n_kv_head, self.head_dim)
        if ve is not None:
            # gate in (0, 2), one value per kv head; zero-initialised gate weights make it exactly 1 at init
            gate = 2.0 * torch.sigmoid(self.ve_gate(x[..., : self.ve_gate_channels]))
            v = v + gate.unsqueeze(-1) * ve.view(B, T, self.n_kv_head, self.head_dim).to(v.dtype)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        q, k = norm(q), norm(k)  # QK-norm after the rotation
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, H, T, D)
        kwargs = {}
        if self.n_kv_head != self.n_head:
            if _SDPA_HAS_GQA:
                kwargs["enable_gqa"] = True
            else:
                rep = self.n_head // self.n_kv_head
                k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        if window < T:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=_window_mask(T, window, q.device), **kwargs)
        else:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, **kwargs)
        y = y.transpose(1, 2).contiguous().view(B, T, -1)
        return self.c_proj(y)

    def _forward_cached(self, x, cos, sin, window: int, ve, cache) -> torch.Tensor:
        """Same maths as forward, shaped for decoding: one matmul makes q, k and v (the cache keeps the
        concatenated weight for the generation), and q and k are rotated and normalised together."""
        B, T, _ = x.shape
        H, Hkv = self.n_head, self.n_kv_head
        qkv = F.linear(x, cache.fused_qkv_weight(self)).view(B, T, H + 2 * Hkv, self.head_dim)
        qk, v = qkv[:, :, : H + Hkv], qkv[:, :, H + Hkv :]
        if ve is not None:
            gate = 2.0 * torch.sigmoid(self.ve_gate(x[..., : self.ve_gate_channels]))
            v = v + gate.unsqueeze(-1) * ve.view(B, T, Hkv, self.head_dim).to(v.dtype)
        qk = norm(apply_rotary(qk, cos, sin))  # rotation and QK-norm act on each head's vector alone
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
        kwargs = {}
        if self.n_kv_head != self.n_head:
            if _SDPA_HAS_GQA:
                kwargs["enable_gqa"] = True
            else:
                rep = self.n_head // self.n_kv_head
                keys, values = keys.repeat_interleave(rep, dim=1), values.repeat_interleave(rep, dim=1)
        mask = cache.attention_mask(T, window)
        if mask is None:
            y = F.scaled_dot_product_attention(q, keys, values, is_causal=True, **kwargs)
        else:
            y = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, **kwargs)
        return y.transpose(1, 2).reshape(B, T, -1)


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = Linear(config.n_embd, 4 * config.n_embd, bias=False)
        self.c_proj = Linear(4 * config.n_embd, config.n_embd, bias=False)

    def forward(self, x):
        return self.c_proj(F.relu(self.c_fc(x)).square())


class Block(nn.Module):
    def __init__(self, config: GPTConfig, layer_idx: int):
        super().__init__()
        self.attn = CausalSelfAttention(config, layer_idx)
        self.mlp = MLP(config)

    def forward(self, x, cos, sin, window: int, ve=None, kv_cache=None):
        x = x + self.attn(norm(x), cos, sin, window, ve, kv_cache)
        x = x + self.mlp(norm(x))
        return x


class GPT(nn.Module):
    # rotary tables cover this many times the training context (generation may run a little longer)
    ROTARY_OVERSIZE = 10

    def __init__(self, config: GPTConfig):
        """Only shapes are decided here; this may run on the meta device. `init_weights()` fills the data."""
        super().__init__()
        self.config = config
        self.window_sizes = window_sizes(config)
        self.transformer = nn.ModuleDict(
            {
                "wte": Embedding(config.vocab_size, config.n_embd),
                "h": nn.ModuleList([Block(config, i) for i in range(config.n_layer)]),
            }
        )
        self.lm_head = Linear(config.n_embd, config.vocab_size, bias=False)
        if config.value_embeds:
            kv_dim = config.n_kv_head * config.head_dim
            self.value_embeds = nn.ModuleDict(
                {
                    str(i): Embedding(config.vocab_size, kv_dim)
                    for i in range(config.n_layer)
                    if has_value_embed(i, config.n_layer)
                }
            )
        else:
            self.value_embeds = None
        if config.resid_scalars:
            self.resid_lambdas = nn.Parameter(torch.ones(config.n_layer))
            self.x0_lambdas = nn.Parameter(torch.zeros(config.n_layer))
        else:
            self.resid_lambdas = None
            self.x0_lambdas = None
        self.rotary_len = config.sequence_len * self.ROTARY_OVERSIZE
        cos, sin = self._rotary_tables(self.rotary_len, device=self.transformer.wte.weight.device)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)
        # buffers are not in checkpoints: rebuild them after any load so a meta -> to_empty -> load path works
        self.register_load_state_dict_post_hook(GPT._after_load)

    @classmethod
    def build(cls, config: GPTConfig, device: str | torch.device = "cpu", init_weights: bool = True) -> "GPT":
        """Make a model the way the reference does: shapes on the meta device, storage on `device`, then
        `init_weights()`. Seed the global RNG right before: the init draws are the only ones consumed, so
        a seed gives the same weights as the reference's `manual_seed -> GPT on meta -> to_empty -> init`.

        init_weights=False leaves the parameters uninitialised (for loading a state dict next); the rotary
        tables are computed on `device` either way.
        """
        try:
            device = torch.device(device)
        except (RuntimeError, TypeError) as e:
            raise NanochatError(f"invalid device {device!r}: {e}") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise NanochatError(f"cannot build the model on {device}: CUDA is not available")
        with torch.device("meta"):
            model = cls(config)
        model.to_empty(device=device)
        if init_weights:
            model.init_weights()
        else:
            model.init_buffers()
        return model

    # -- initialisation ---------------------------------------------------------------------------------
    def _rotary_tables(self, seq_len: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        head_dim = self.config.head_dim
        if torch.device(device).type == "meta":
            # shapes only (init_buffers fills them later); arange on meta would import torch._refs (seconds)
            shape = (1, seq_len, 1, head_dim // 2)
            return torch.empty(shape, device=device), torch.empty(shape, device=device)
        channels = torch.arange(0, head_dim, 2, dtype=torch.float32, device=device)
        inv_freq = 1.0 / (self.config.rope_base ** (channels / head_dim))
        t = torch.arange(seq_len, dtype=torch.float32, device=device)
        freqs = torch.outer(t, inv_freq)
        return freqs.cos()[None, :, None, :], freqs.sin()[None, :, None, :]  # (1, T, 1, D/2)

    @torch.no_grad()
    def init_buffers(self) -> None:
        """(Re)compute the rotary tables on the model's current device."""
        device = self.transformer.wte.weight.device
        cos, sin = self._rotary_tables(self.rotary_len, device=device)
        self.cos, self.sin = cos, sin

    @staticmethod
    def _after_load(module: "GPT", incompatible_keys) -> None:
        if module.transformer.wte.weight.device.type != "meta":
            module.init_buffers()

    @torch.no_grad()
    def init_weights(self) -> None:
        """Initialise every parameter and buffer in place with the reference scheme named by `config.init`.

        The random draws come from the global RNG of the parameters' device, in exactly this order (the
        reference's), so one seed gives the reference's initial weights:

        "v0" (first release; its `model.apply(...)` visits the modules in registration order):
            1. wte                                       N(0, 1)
            2. for each layer: attn.c_q, attn.c_k, attn.c_v, attn.c_proj, [attn.ve_gate], mlp.c_fc, mlp.c_proj
                                                         N(0, 1/sqrt(fan_in) * min(1, sqrt(fan_out/fan_in)))
            3. lm_head                                   N(0, same rule)
            4. [value_embeds, ascending layer]           N(0, 1)
            then, drawing nothing: lm_head, attn.c_proj, mlp.c_proj (and ve_gate) set to 0.
        "jan2026" (commit 348fbb3), s = sqrt(3) / sqrt(n_embd) (the std of N(0, 1/n_embd)):
            1. wte                                       N(0, 1)
            2. lm_head                                   N(0, 0.001)
            3. for each layer: attn.c_q, attn.c_k, attn.c_v, mlp.c_fc
                                                         U(-s, s)
            4. [value_embeds, ascending layer]           U(-s, s)
            then, drawing nothing: attn.c_proj, mlp.c_proj, ve_gate = 0 (gate 1 at init),
            resid_lambdas = 1, x0_lambdas = x0_init.
        Bracketed items exist only with their switch on; in v0 they are this model's extensions and follow
        the module walk. The reference pads its tables to a multiple of 64 rows, so parity needs such a vocab
        (65,536 and 32,768 are). Scales are the reference's float expressions, so they match bit for bit.
        """
        cfg = self.config
        blocks = list(self.transformer.h)
        if cfg.init == "v0":
            # pre-order walk: the leaves (the only modules with weights) come in the same order as apply()'s
            for module in self.modules():
                if isinstance(module, nn.Linear):
                    fan_out, fan_in = module.weight.shape
                    std = 1.0 / math.sqrt(fan_in) * min(1.0, math.sqrt(fan_out / fan_in))
                    nn.init.normal_(module.weight, mean=0.0, std=std)
                elif isinstance(module, nn.Embedding):
                    nn.init.normal_(module.weight, mean=0.0, std=1.0)
            nn.init.zeros_(self.lm_head.weight)
        else:
            s = 3**0.5 * cfg.n_embd**-0.5
            nn.init.normal_(self.transformer.wte.weight, mean=0.0, std=1.0)
            nn.init.normal_(self.lm_head.weight, mean=0.0, std=0.001)
            for block in blocks:
                for lin in (block.attn.c_q, block.attn.c_k, block.attn.c_v, block.mlp.c_fc):
                    nn.init.uniform_(lin.weight, -s, s)
            if self.value_embeds is not None:
                for emb in self.value_embeds.values():
                    nn.init.uniform_(emb.weight, -s, s)
        for block in blocks:
            nn.init.zeros_(block.attn.c_proj.weight)
            nn.init.zeros_(block.mlp.c_proj.weight)
            if block.attn.ve_gate is not None:
                nn.init.zeros_(block.attn.ve_gate.weight)  # gate = 2 * sigmoid(0) = 1
        if self.resid_lambdas is not None:
            self.resid_lambdas.fill_(1.0)
            self.x0_lambdas.fill_(cfg.x0_init)
        self.init_buffers()

    # -- forward ----------------------------------------------------------------------------------------
    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        loss_reduction: str = "mean",
        kv_cache=None,
    ):
        """idx (B, T) token ids. Without targets: fp32 soft-capped logits (B, T, V).

        With targets (B, T; -1 = ignore): the cross-entropy in fp32, 'mean' over non-ignored targets,
        'sum', or 'none' (B, T) with zeros at ignored positions.

        With a kv_cache (`nanochat.engine.KVCache`): idx continues the cached sequence at `kv_cache.pos`
        (rotary positions from there, windows over cached keys), its keys/values are written into the
        cache, the cache advances by T, and only the last position's logits are returned, (B, 1, V).
        """
        B, T = idx.shape
        if kv_cache is not None:
            if targets is not None:
                raise NanochatError("targets cannot be combined with a kv_cache")
            return self._forward_cached(idx, kv_cache)
        if T > self.rotary_len:
            raise NanochatError(f"sequence of {T} tokens is longer than the rotary table ({self.rotary_len})")
        x = self._trunk(idx, self.cos[:, :T], self.sin[:, :T])
        logits = self.lm_head(norm(x)).float()
        cap = self.config.logit_softcap
        if cap and cap > 0:
            logits = cap * torch.tanh(logits / cap)
        if targets is None:
            return logits
        if loss_reduction not in ("mean", "sum", "none"):
            raise ValueError(f"loss_reduction must be 'mean', 'sum' or 'none', got {loss_reduction!r}")
        loss = F.cross_entropy(
            logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1, reduction=loss_reduction
        )
        if loss_reduction == "none":
            loss = loss.view(B, T)
        return loss

    def _trunk(self, idx: torch.Tensor, cos, sin, kv_cache=None) -> torch.Tensor:
        """Embedding and every block (the same path for training and cached generation); (B, T, d), not normed."""
        x = norm(self.transformer.wte(idx))
        x0 = x
        for i, block in enumerate(self.transformer.h):
            if self.resid_lambdas is not None:
                x = self.resid_lambdas[i] * x + self.x0_lambdas[i] * x0
            ve = None
            if self.value_embeds is not None and str(i) in self.value_embeds:
                ve = self.value_embeds[str(i)](idx)
            x = block(x, cos, sin, self.window_sizes[i], ve, kv_cache)
        return x

    def _forward_cached(self, idx: torch.Tensor, kv_cache) -> torch.Tensor:
        T = idx.size(1)
        start = kv_cache.pos
        if start + T > self.rotary_len:
            raise NanochatError(f"position {start + T} is beyond the rotary table ({self.rotary_len})")
        positions = kv_cache.positions(T)
        if positions is None:
            cos, sin = self.cos[:, start : start + T], self.sin[:, start : start + T]
        else:  # left-padded rows: each row counts positions from its first real token
            cos, sin = self.cos[0][positions], self.sin[0][positions]  # (B, T, 1, D/2)
        x = self._trunk(idx, cos, sin, kv_cache)
        kv_cache.advance(T)
        logits = self.lm_head(norm(x[:, -1:])).float()
        cap = self.config.logit_softcap
        if cap and cap > 0:  # in place: no autograd here, and (B, V) temporaries cost memory traffic
            logits.div_(cap).tanh_().mul_(cap)
        return logits

    # -- accounting -------------------------------------------------------------------------------------
    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def num_scaling_params(self) -> dict[str, int]:
        """Parameter counts by role (the Jan-2026 horizon uses transformer_matrices + lm_head)."""
        counts = {
            "wte": self.transformer.wte.weight.numel(),
            "value_embeds": sum(p.numel() for p in self.value_embeds.parameters()) if self.value_embeds else 0,
            "lm_head": self.lm_head.weight.numel(),
            "transformer_matrices": sum(p.numel() for p in self.transformer.h.parameters()),
            "scalars": (self.resid_lambdas.numel() + self.x0_lambdas.numel()) if self.resid_lambdas is not None else 0,
        }
        counts["total"] = sum(counts.values())
        return counts

    def estimate_flops(self) -> float:
        """Training FLOPs per token: 6 x (params outside the embedding tables and scalars) + attention.

        Attention costs 12 * n_head * head_dim * (window seen) per layer (forward + backward).
        """
        counts = self.num_scaling_params()
        dense = counts["total"] - counts["wte"] - counts["value_embeds"] - counts["scalars"]
        cfg = self.config
        attn = sum(12 * cfg.n_head * cfg.head_dim * min(w, cfg.sequence_len) for w in self.window_sizes)
        return float(6 * dense + attn)

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """Parameters by optimizer role. Every parameter appears exactly once."""
        groups: dict[str, list[nn.Parameter]] = {
            "matrix": [p for p in self.transformer.h.parameters()],
            "embedding": [self.transformer.wte.weight],
            "lm_head": [self.lm_head.weight],
        }
        if self.value_embeds is not None:
            groups["value_embeds"] = [p for p in self.value_embeds.parameters()]
        if self.resid_lambdas is not None:
            groups["resid_scalars"] = [self.resid_lambdas]
            groups["x0_scalars"] = [self.x0_lambdas]
        return groups

    # -- sampling ---------------------------------------------------------------------------------------
    def generate(
        self,
        tokens: list[int],
        max_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        seed: int = 42,
    ):
        """Yield up to max_tokens sampled token ids for one prompt (KV-cached, via `nanochat.engine.Engine`).

        No token is special here (no stop, no tools); prompts longer than the context keep their last
        tokens. Uses its own torch.Generator, so the global RNG is untouched. temperature 0 means greedy.
        """
        from nanochat.engine import Engine

        if not tokens:
            raise NanochatError("generate() needs at least one prompt token")
        steps = Engine(self, tokenizer=None).generate(
            list(tokens), max_tokens=max_tokens, temperature=temperature, top_k=top_k, seed=seed, truncate="left"
        )
        for step_tokens, _ in steps:
            yield step_tokens[0]
