"""The GPT model: a small, modern decoder-only Transformer.

Baseline ("v0") architecture:
- rotary position embeddings (no learned positions), base configurable
- RMSNorm without learnable parameters: after the token embedding, before every sub-layer (pre-norm)
  and before the lm_head
- QK-norm (RMSNorm of queries and keys after the rotation)
- grouped-query attention (n_kv_head divides n_head) through PyTorch SDPA, causal
- MLP with 4x expansion and relu(x)^2, no biases anywhere, untied embedding / unembedding
- logits soft-capped as cap * tanh(logits / cap), computed in fp32

Optional later features (all off by default, switched on by presets; attention itself is in nanochat.attention):
- sliding-window attention from a pattern string such as "SSSL" (tiled over layers, last layer always full)
- value embeddings on alternating layers, mixed into the values through a small input-dependent gate
- per-layer residual scalars: x <- resid_lambda[i] * x + x0_lambda[i] * x0 before every block
- smear: each token's normed embedding gets a gated share of the previous token's (before x0 is taken)
- backout: the residual after block n_layer // 2, times a learned scalar, is subtracted before the final norm

Build models with `GPT.build(config, device)`: shapes on the meta device, storage on the target device, then
`init_weights()`, whose random draws (the only ones) follow the reference's order (nanochat.gpt_init), so a
seed reproduces its weights. Activations take the dtype of the embedding tables: fp32 normally, bf16 after
`set_compute_dtype(torch.bfloat16)` (the "bf16-cast" precision; Linear layers cast their fp32 weights).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from nanochat.attention import CausalSelfAttention, Linear, apply_rotary, norm  # noqa: F401 (re-exported)
from nanochat.chunked_loss import chunked_cross_entropy
from nanochat.common import NanochatError
from nanochat.gpt_init import SCHEMES, init_parameters

SMEAR_CHANNELS = 24  # the smear gate reads this many leading channels of the normed embedding


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
    # "S" window rounded up to a multiple of this (Jul-2026: 128); 1 = the product truncated, as in Jan-2026
    short_window_multiple: int = 1
    # Value embeddings on alternating layers (the last layer always has one), gated per kv head.
    value_embeds: bool = False
    ve_gate_channels: int = 32  # the gate reads the first this-many channels of the block input
    ve_gate_scale: float = 2.0  # gate = ve_gate_scale * sigmoid(...)
    # Per-layer learnable residual scalars (resid_lambdas init 1.0, x0_lambdas init x0_init; ramps in jul2026).
    resid_scalars: bool = False
    x0_init: float = 0.1
    qk_scale: float = 1.0  # q and k multiplied by this after QK-norm (sharper attention)
    smear: bool = False  # previous-token embedding mixing
    backout: bool = False  # subtract the scaled mid-depth residual before the final norm
    # Weight initialisation: "v0", "jan2026" or "jul2026" (see nanochat.gpt_init).
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
        if not isinstance(self.short_window_multiple, int) or self.short_window_multiple < 1:
            problems.append(f"short_window_multiple ({self.short_window_multiple}) must be a positive integer")
        if not self.qk_scale > 0 or not self.ve_gate_scale > 0:
            problems.append(f"qk_scale ({self.qk_scale}) and ve_gate_scale ({self.ve_gate_scale}) must be > 0")
        if self.smear and self.n_embd < SMEAR_CHANNELS:
            problems.append(f"smear reads {SMEAR_CHANNELS} channels: n_embd ({self.n_embd}) is too small")
        if self.init not in SCHEMES:
            problems.append(f"init {self.init!r} must be one of: {', '.join(SCHEMES)}")
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


def short_window(config: GPTConfig) -> int:
    """The "S" window: sequence_len x short_window_frac, rounded up to short_window_multiple when that is > 1."""
    w = config.sequence_len * config.short_window_frac
    m = config.short_window_multiple
    return max(1, int(w) if m == 1 else math.ceil(w / m) * m)


def window_sizes(config: GPTConfig) -> list[int]:
    """Attention window (in tokens, counting back from the query) for every layer."""
    long_window = config.sequence_len
    if config.window_pattern is None:
        return [long_window] * config.n_layer
    short = short_window(config)
    pattern = config.window_pattern.upper()
    sizes = [short if pattern[i % len(pattern)] == "S" else long_window for i in range(config.n_layer)]
    sizes[-1] = long_window
    return sizes


def cast_compute_dtype(device) -> torch.dtype:
    """The activation dtype of the "bf16-cast" precision on `device`: bf16 on CUDA sm80+, fp32 elsewhere."""
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 0):
        return torch.bfloat16
    return torch.float32


class Embedding(nn.Embedding):
    """nn.Embedding whose constructor leaves the table uninitialised (see `Linear`)."""

    def reset_parameters(self) -> None:
        pass


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
        has_ve = config.value_embeds and has_value_embed(layer_idx, config.n_layer)
        self.attn = CausalSelfAttention(config, layer_idx, has_ve)
        self.mlp = MLP(config)

    def forward(self, x, cos, sin, window: int, ve=None, kv_cache=None):
        x = x + self.attn(norm(x), cos, sin, window, ve, kv_cache)
        x = x + self.mlp(norm(x))
        return x


class GPT(nn.Module):
    # rotary tables cover this many times the training context (prompts and generation may run that long)
    ROTARY_OVERSIZE = 10
    # tokens per chunk of the fused lm_head + cross-entropy when targets are given (0 = full logits); set_loss_chunk
    loss_chunk: int = 0

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
        # top-level (not in transformer.h): the smear gate is a tiny matrix but no Muon matrix
        self.smear_gate = Linear(SMEAR_CHANNELS, 1, bias=False) if config.smear else None
        self.smear_lambda = nn.Parameter(torch.zeros(1)) if config.smear else None
        self.backout_lambda = nn.Parameter(torch.zeros(1)) if config.backout else None
        self.rotary_len = config.sequence_len * self.ROTARY_OVERSIZE
        cos, sin = self._rotary_tables(self.rotary_len, device=self.transformer.wte.weight.device)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)
        # buffers are not in checkpoints: rebuild them after any load so a meta -> to_empty -> load path works
        self.register_load_state_dict_post_hook(GPT._after_load)

    @classmethod
    def build(cls, config: GPTConfig, device: str | torch.device = "cpu", init_weights: bool = True,
              compute_dtype: torch.dtype | None = None) -> "GPT":
        """Make a model the way the reference does: shapes on the meta device, storage on `device`, then
        `init_weights()`. Seed the global RNG right before: the init draws are the only ones consumed, so
        a seed gives the same weights as the reference's `manual_seed -> GPT on meta -> to_empty -> init`.

        init_weights=False leaves the parameters uninitialised (for loading a state dict next); the rotary
        tables are computed on `device` either way. compute_dtype: see `set_compute_dtype` (None = fp32).
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
        if compute_dtype is not None:
            model.set_compute_dtype(compute_dtype)
        return model

    def set_loss_chunk(self, n: int) -> None:
        """With n > 0, forward() with targets computes the lm_head and the loss n tokens at a time
        (nanochat.chunked_loss): same loss and gradients, no (B, T, V) logits. 0 restores the full logits.
        The chunked path multiplies by lm_head.weight itself, so an fp8-converted lm_head runs in the compute
        dtype there."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise NanochatError(f"loss_chunk must be a whole number of tokens >= 0 (0 = off), got {n!r}")
        self.loss_chunk = n

    def set_compute_dtype(self, dtype: torch.dtype) -> "GPT":
        """Store the token and value embedding tables in `dtype`; activations then start (and stay) in it.

        Every other parameter stays fp32 (the master weights); the Linear layers cast them per matmul. This is
        the reference's compute-dtype scheme (replacing autocast). fp32 restores the default.
        """
        self.transformer.wte.to(dtype=dtype)
        if self.value_embeds is not None:
            self.value_embeds.to(dtype=dtype)
        return self

    def set_attention(self, name: str) -> None:
        """The kernel of the uncached forward on every layer: "sdpa" (the default) or "flex" (sliding-window layers
        through flex_attention; nanochat.attention_kernels). Call it before compiling the model: the flex block
        masks for the training context are built here, outside any compiled graph."""
        from nanochat.attention_kernels import check_backend, prepare

        check_backend(name)
        for block in self.transformer.h:
            block.attn.set_backend(name)
        prepare(name, self.config.sequence_len, self.window_sizes, self.transformer.wte.weight.device)

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
        """Initialise every parameter and buffer in place with the scheme named by `config.init`; the random
        draws come from the global RNG of the parameters' device in the reference's order (nanochat.gpt_init)."""
        init_parameters(self)
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

        T may exceed the training context up to the rotary table (ROTARY_OVERSIZE x sequence_len): every layer
        then still looks back at most its window (sequence_len for the long layers), as the reference does.

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
        if targets is not None and self.loss_chunk > 0:
            return chunked_cross_entropy(norm(x), self.lm_head.weight, targets, self.config.logit_softcap,
                                         self.loss_chunk, loss_reduction)
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

    def _smear(self, x: torch.Tensor, kv_cache=None, positions=None) -> torch.Tensor:
        """x[t] += smear_lambda * sigmoid(gate(x[t, :24])) * x[t-1] for every t with a previous token.

        With a cache the previous token of the first new position is the cache's carried embedding (the
        last normed embedding it saw, one per row); positions (B, T) of left-padded rows mark each row's
        first real token (position 0), which has no previous token.
        """
        lam = self.smear_lambda.to(x.dtype)
        carried = None
        if kv_cache is not None:
            carried = kv_cache.prev_embedding
            if carried is None and kv_cache.pos > 0:
                raise NanochatError("a smear model's KV cache lost its previous-token embedding")
            kv_cache.prev_embedding = x[:, -1:]
        if carried is None:
            if x.size(1) < 2:
                return x
            cur, prev = x[:, 1:], x[:, :-1]
        else:
            cur, prev = x, (carried if x.size(1) == 1 else torch.cat([carried, x[:, :-1]], dim=1))
        gate = lam * torch.sigmoid(self.smear_gate(cur[..., :SMEAR_CHANNELS]))
        if positions is not None:
            gate = gate * (positions[:, x.size(1) - cur.size(1):, None] > 0).to(gate.dtype)
        mixed = cur + gate * prev
        return mixed if carried is not None else torch.cat([x[:, :1], mixed], dim=1)

    def _trunk(self, idx: torch.Tensor, cos, sin, kv_cache=None, positions=None) -> torch.Tensor:
        """Embedding and every block (the same path for training and cached generation); (B, T, d), not normed."""
        x = norm(self.transformer.wte(idx))
        if self.smear_gate is not None:
            x = self._smear(x, kv_cache, positions)
        x0 = x
        backout_at = self.config.n_layer // 2 if self.backout_lambda is not None else -1
        x_mid = None
        for i, block in enumerate(self.transformer.h):
            if self.resid_lambdas is not None:
                x = self.resid_lambdas[i] * x + self.x0_lambdas[i] * x0
            ve = None
            if self.value_embeds is not None and str(i) in self.value_embeds:
                ve = self.value_embeds[str(i)](idx)
            x = block(x, cos, sin, self.window_sizes[i], ve, kv_cache)
            if i == backout_at:
                x_mid = x
        if x_mid is not None:
            x = x - self.backout_lambda.to(x.dtype) * x_mid
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
        x = self._trunk(idx, cos, sin, kv_cache, positions)
        kv_cache.advance(T)
        logits = self.lm_head(norm(x[:, -1:])).float()
        cap = self.config.logit_softcap
        if cap and cap > 0:  # in place: no autograd here, and (B, V) temporaries cost memory traffic
            logits.div_(cap).tanh_().mul_(cap)
        return logits

    # -- accounting -------------------------------------------------------------------------------------
    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def _smear_params(self) -> list[nn.Parameter]:
        params = [self.smear_gate.weight, self.smear_lambda] if self.smear_gate is not None else []
        return params + ([self.backout_lambda] if self.backout_lambda is not None else [])

    def num_scaling_params(self) -> dict[str, int]:
        """Parameter counts by role (the Jan-2026 horizon uses transformer_matrices + lm_head)."""
        scalars = [self.resid_lambdas, self.x0_lambdas] if self.resid_lambdas is not None else []
        counts = {
            "wte": self.transformer.wte.weight.numel(),
            "value_embeds": sum(p.numel() for p in self.value_embeds.parameters()) if self.value_embeds else 0,
            "lm_head": self.lm_head.weight.numel(),
            "transformer_matrices": sum(p.numel() for p in self.transformer.h.parameters()),
            "scalars": sum(p.numel() for p in scalars + self._smear_params()),
        }
        counts["total"] = sum(counts.values())
        return counts

    def estimate_flops(self) -> float:
        """Training FLOPs per token: 6 x (matmul weights) + attention.

        Matmul weights are found by shape: every 2-D parameter except the embedding tables (lookups). So a
        Linear swapped for another module type (an fp8 one) is still counted. Attention costs
        12 * n_head * head_dim * (window seen) per layer (forward + backward).
        """
        tables = {id(self.transformer.wte.weight)}
        if self.value_embeds is not None:
            tables |= {id(p) for p in self.value_embeds.parameters()}
        dense = sum(p.numel() for p in self.parameters() if p.ndim == 2 and id(p) not in tables)
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
        if self._smear_params():
            groups["smear"] = self._smear_params()
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
