"""Fast generation: a KV cache, batched sampling and the per-row tool-use state machine.

The one idea: each prompt is run through the model once (the prefill) while its keys and values are written
into a pre-allocated cache; after that every step feeds exactly one token per row, so a step costs one
token's worth of compute. Rows of a batch share cache positions: shorter prompts sit right-aligned
(left-padded), their rotary positions start at 0 on their first real token and a key mask hides the padding.
The k samples of a prompt get copies of its prefilled cache rows (never recomputed), then each row samples
its own tokens with the engine's own seeded generator.

Tool use: a row that emits <|python_start|> ... <|python_end|> gets the code between them evaluated by
`nanochat.tools.calculator`, and <|output_start|> result <|output_end|> is forced into that row (mask 0)
one token per step before sampling resumes.
"""
from __future__ import annotations

from collections import deque

import torch
import torch.nn.functional as F

from nanochat.common import NanochatError
from nanochat.tools import calculator


def inference_dtype(model, device: torch.device) -> torch.dtype:
    """The dtype activations (hence keys/values) have: autocast's if it is on, else the weights'."""
    if device.type in ("cuda", "cpu") and torch.is_autocast_enabled(device.type):
        return torch.get_autocast_dtype(device.type)
    return model.transformer.wte.weight.dtype


class KVCache:
    """Pre-allocated keys and values, (layers, B, H_kv, T, D) each, plus the next write position.

    Heads before positions: a decoding step then reads each head's keys as one contiguous block, the layout
    SDPA wants (measured: a d4 step at batch 16 is ~25% faster than with (layers, B, T, H_kv, D)).

    `pad` (B,) holds each row's count of left-padding positions (None when no row is padded): the rotary
    position of cache slot t in row b is t - pad[b], and slots below pad[b] are never attended to.

    `prev_embedding` (B, 1, d): for models with smear, the normed embedding of each row's last token so far
    (the model reads and replaces it on every forward); None before the first one.
    """

    def __init__(self, n_layer, batch_size, max_len, n_kv_head, head_dim, dtype, device, pad=None):
        shape = (n_layer, batch_size, n_kv_head, max_len, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.max_len = max_len
        self.pos = 0
        self.prev_embedding: torch.Tensor | None = None
        self._fused: dict[tuple[int, torch.dtype], torch.Tensor] = {}
        self._set_pad(pad, device)

    @classmethod
    def for_model(cls, model, batch_size: int, max_len: int, pad=None, dtype=None) -> "KVCache":
        cfg = model.config
        device = model.transformer.wte.weight.device
        dtype = dtype or inference_dtype(model, device)
        return cls(cfg.n_layer, batch_size, max_len, cfg.n_kv_head, cfg.head_dim, dtype, device, pad)

    def _set_pad(self, pad, device) -> None:
        if pad is not None and not isinstance(pad, torch.Tensor):
            pad = torch.tensor(pad, dtype=torch.long, device=device)
        if pad is not None and not bool((pad > 0).any()):
            pad = None
        self.pad = pad
        # (B, 1, 1, T) boolean "this slot holds a real token"; broadcasts over heads and queries
        self.key_valid = None
        if pad is not None:
            slots = torch.arange(self.max_len, device=device)
            self.key_valid = (slots[None, :] >= pad[:, None])[:, None, None, :]

    @property
    def batch_size(self) -> int:
        return self.k.size(1)

    def insert(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        """Write k, v (B, T, H_kv, D) at the current position; return views (B, H_kv, pos + T, D) of all
        keys/values so far."""
        end = self.pos + k.size(1)
        if end > self.max_len:
            raise NanochatError(f"KV cache full: {end} positions needed, {self.max_len} allocated")
        self.k[layer, :, :, self.pos : end] = k.transpose(1, 2)
        self.v[layer, :, :, self.pos : end] = v.transpose(1, 2)
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]

    def fused_qkv_weight(self, attn, dtype: torch.dtype) -> torch.Tensor:
        """[c_q; c_k; c_v] weights of an attention layer in the activations' dtype, concatenated (and cast)
        once per cache (i.e. per generation)."""
        key = (attn.layer_idx, dtype)
        w = self._fused.get(key)
        if w is None:
            w = torch.cat([attn.c_q.weight, attn.c_k.weight, attn.c_v.weight], dim=0).to(dtype)
            self._fused[key] = w
        return w

    def share_weights(self, other: "KVCache") -> None:
        """Use (and fill) the other cache's fused q/k/v weights instead of concatenating them again."""
        self._fused = other._fused

    def advance(self, n: int) -> None:
        self.pos += n

    def positions(self, n: int) -> torch.Tensor | None:
        """Rotary positions (B, n) of the next n slots, or None when they are simply pos..pos+n-1."""
        if self.pad is None:
            return None
        slots = torch.arange(self.pos, self.pos + n, device=self.pad.device)
        return (slots[None, :] - self.pad[:, None]).clamp_(min=0)

    def attention_mask(self, n: int, window: int) -> torch.Tensor | None:
        """Boolean (B|1, 1, n, pos+n) mask for n new queries, or None when plain causal attention is exact."""
        start, end = self.pos, self.pos + n
        if self.pad is None and start == 0 and window >= n:
            return None
        q = torch.arange(start, end, device=self.k.device)[:, None]
        kpos = torch.arange(end, device=self.k.device)[None, :]
        delta = q - kpos
        mask = ((delta >= 0) & (delta <= window))[None, None]
        if self.key_valid is not None:
            # padding queries attend to themselves only, which keeps their (unused) outputs finite
            mask = (mask & self.key_valid[..., :end]) | (delta == 0)
        return mask

    def decode_mask(self, lo: int, end: int) -> torch.Tensor | None:
        """Key mask (B, 1, 1, end - lo) for a one-token step that reads slots lo..end-1."""
        return None if self.key_valid is None else self.key_valid[..., lo:end]


def sample_next(logits: torch.Tensor, rng: torch.Generator, temperature: float, top_k=None, top_p=None):
    """One token id per row from fp32 logits (B, V): greedy at temperature 0, else top-k/top-p sampling."""
    if temperature == 0.0:
        return logits.argmax(dim=-1)
    probs, index = sampling_probs(logits, temperature, top_k, top_p)
    return draw(probs, index, rng)


def sampling_probs(logits: torch.Tensor, temperature: float, top_k=None, top_p=None):
    """(probabilities, their token ids or None = all) per row for temperature > 0; rows are independent, so
    a batch of requests with the same settings can share this and draw with their own generators."""
    logits = logits / temperature
    index = None
    if top_k is not None and top_k < logits.size(-1):
        logits, index = torch.topk(logits, top_k, dim=-1)  # sorted, largest first
    elif top_p is not None and top_p < 1.0:
        logits, index = torch.sort(logits, dim=-1, descending=True)
    if top_p is not None and top_p < 1.0:
        probs = F.softmax(logits, dim=-1)
        # drop a token when the ones before it already cover top_p (the most likely always stays)
        drop = (probs.cumsum(dim=-1) - probs) > top_p
        logits = logits.masked_fill(drop, float("-inf"))
    return F.softmax(logits, dim=-1), index


def draw(probs: torch.Tensor, index, rng: torch.Generator) -> torch.Tensor:
    """One token id per row of `sampling_probs`' output, drawn with `rng`."""
    choice = torch.multinomial(probs, 1, generator=rng)
    return (choice if index is None else index.gather(-1, choice)).squeeze(-1)


def _logprob_rows(logp: torch.Tensor, tokens: list[int], k: int) -> list[tuple[float, list[tuple[int, float]]]]:
    """Per row: (log-probability of its token, the k likeliest (id, log-probability), most likely first)."""
    chosen = logp.gather(1, torch.tensor(tokens, device=logp.device)[:, None]).squeeze(1).tolist()
    if k <= 0:
        return [(c, []) for c in chosen]
    top_lp, top_id = logp.topk(min(k, logp.size(-1)), dim=-1)
    return [(c, list(zip(ids, lps))) for c, ids, lps in zip(chosen, top_id.tolist(), top_lp.tolist())]


class _Row:
    """Per-row generation state: finished?, forced tokens to emit, code being collected."""

    __slots__ = ("done", "stop", "forced", "code")

    def __init__(self):
        self.done = False
        self.stop = None
        self.forced: deque[int] = deque()
        self.code: list[int] | None = None  # not None while inside <|python_start|> ... <|python_end|>


class Engine:
    """Generation for a GPT (any dtype, any device) with a tokenizer for stop and tool tokens.

    Without a tokenizer (tokenizer=None) no token is special: no stops, no BOS masking, no tools.
    """

    def __init__(self, model, tokenizer=None):
        self.model = model
        self.tokenizer = tokenizer
        self.special = {}
        if tokenizer is not None:
            names = ("bos", "assistant_end", "python_start", "python_end", "output_start", "output_end")
            self.special = {name: tokenizer.encode_special(f"<|{name}|>") for name in names}

    # -- input checks -----------------------------------------------------------------------------------
    def _prepare_prompts(self, prompts, truncate: str) -> list[list[int]]:
        if truncate not in ("error", "left"):
            raise NanochatError(f"truncate must be 'error' or 'left', got {truncate!r}")
        if isinstance(prompts, torch.Tensor):
            prompts = prompts.tolist()
        if not isinstance(prompts, (list, tuple)) or not prompts:
            raise NanochatError("prompts must be a non-empty list of token ids or a non-empty list of such lists")
        batch = [list(prompts)] if not isinstance(prompts[0], (list, tuple)) else [list(p) for p in prompts]
        vocab = self.model.config.vocab_size
        context = self.model.config.sequence_len
        out = []
        for i, p in enumerate(batch):
            if not p:
                raise NanochatError(f"prompt {i} is empty: it needs at least one token (e.g. <|bos|>)")
            if not all(isinstance(t, int) and not isinstance(t, bool) and 0 <= t < vocab for t in p):
                raise NanochatError(f"prompt {i} must contain integer token ids in [0, {vocab})")
            if len(p) > context:
                if truncate == "error":
                    raise NanochatError(
                        f"prompt {i} has {len(p)} tokens, more than the model's context of {context}; "
                        "shorten it or pass truncate='left' to keep its last tokens"
                    )
                p = p[-context:]
            out.append(p)
        return out

    @staticmethod
    def _check_sampling(num_samples, max_tokens, temperature, top_k, top_p) -> None:
        if not isinstance(num_samples, int) or num_samples < 1:
            raise NanochatError(f"num_samples must be a positive integer, got {num_samples!r}")
        if not isinstance(max_tokens, int) or max_tokens < 0:
            raise NanochatError(f"max_tokens must be a non-negative integer, got {max_tokens!r}")
        if not isinstance(temperature, (int, float)) or not temperature >= 0:
            raise NanochatError(f"temperature must be >= 0, got {temperature!r}")
        if top_k is not None and (not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 0):
            raise NanochatError(f"top_k must be None or a non-negative integer (0 = off), got {top_k!r}")
        if top_p is not None and (not isinstance(top_p, (int, float)) or not 0.0 < top_p <= 1.0):
            raise NanochatError(f"top_p must be None or in (0, 1], got {top_p!r}")

    # -- generation -------------------------------------------------------------------------------------
    @torch.inference_mode()
    def generate(self, prompts, num_samples=1, max_tokens=256, temperature=1.0, top_k=None, top_p=None,
                 seed=42, truncate="error", use_tools=True, logprobs=None):
        """prompts: list[int] (one prompt) or list[list[int]] (a batch, lengths may differ).

        Rows = each prompt x num_samples, prompt-major order. Yields one step at a time:
        (tokens: list[int], masks: list[int]) with one entry per row. mask 1 = sampled, 0 = forced by the
        tool (or a finished row's filler). A row stops on <|assistant_end|> or <|bos|> (yielded with mask 1) or after
        max_tokens; a finished row then yields its stop token again with mask 0 until every row is done.
        Sampling uses its own torch.Generator seeded with `seed`; the global RNG is untouched. <|bos|> is
        never sampled. Prompts longer than the model's context raise NanochatError, or keep their last
        tokens with truncate="left".
        logprobs=k (an int >= 0): each step yields a third item, per row (log-probability of the emitted
        token, [(id, log-probability)] of the k likeliest), from the model's distribution (log-softmax of the
        logits, before temperature and top-k/top-p; forced tokens get theirs too).
        """
        self._check_sampling(num_samples, max_tokens, temperature, top_k, top_p)
        top_k = top_k or None
        batch = self._prepare_prompts(prompts, truncate)
        model = self.model
        device = model.transformer.wte.weight.device
        longest = max(len(p) for p in batch)
        total = longest + max_tokens
        if total > model.rotary_len:
            raise NanochatError(
                f"prompt ({longest} tokens) + max_tokens ({max_tokens}) exceeds the model's rotary table "
                f"({model.rotary_len} positions); lower max_tokens"
            )
        if max_tokens == 0:
            return
        special = self.special if self.tokenizer is not None else {}
        bos = special.get("bos")
        stops = {special[n] for n in ("assistant_end", "bos") if n in special}
        tools = use_tools and "python_start" in special

        cache, logits = self._prefill(batch, num_samples, total)
        n_rows = len(batch) * num_samples
        rows = [_Row() for _ in range(n_rows)]
        rng = torch.Generator(device=device)
        rng.manual_seed(seed)
        for step in range(max_tokens):
            if bos is not None:
                logits[:, bos] = float("-inf")
            sampled = sample_next(logits, rng, float(temperature), top_k, top_p).tolist()
            logp = None if logprobs is None else F.log_softmax(logits.float(), dim=-1)
            tokens, masks = self.advance_rows(rows, sampled, stops, tools)
            if logp is None:
                yield tokens, masks
            else:
                yield tokens, masks, _logprob_rows(logp, tokens, int(logprobs))
            if step == max_tokens - 1 or all(row.done for row in rows):
                return
            step_input = torch.tensor(tokens, dtype=torch.long, device=device).view(n_rows, 1)
            logits = model(step_input, kv_cache=cache)[:, -1, :]

    def _prefill(self, batch: list[list[int]], num_samples: int, total: int):
        """Run each prompt once and lay its keys/values into its num_samples rows of one decoding cache.

        Prompts of equal length are prefilled together (no padding, plain causal attention); the shorter
        ones end up right-aligned (left-padded) in the shared cache. Measured on CPU (bench/decode.py):
        16 prompts of mixed lengths prefill ~1.3x faster this way than as one left-padded masked batch.
        Returns the cache and the last-position logits of every row (prompt-major order).
        """
        model, k = self.model, num_samples
        device = model.transformer.wte.weight.device
        longest = max(len(p) for p in batch)
        pads = [longest - len(p) for p in batch for _ in range(k)]
        cache = KVCache.for_model(model, len(batch) * k, total, pad=pads)
        logits = None
        groups: dict[int, list[int]] = {}
        for i, p in enumerate(batch):
            groups.setdefault(len(p), []).append(i)
        for length, members in groups.items():
            part = KVCache.for_model(model, len(members), length, dtype=cache.k.dtype)
            part.share_weights(cache)
            idx = torch.tensor([batch[i] for i in members], dtype=torch.long, device=device)
            out = model(idx, kv_cache=part)[:, -1, :]
            if logits is None:
                logits = out.new_empty((len(batch) * k, out.size(-1)))
            # every sample of a prompt gets a copy of its prefill: copied, never recomputed
            rows = torch.tensor([i * k + s for i in members for s in range(k)], device=device)
            cache.k[:, rows, :, longest - length : longest] = part.k.repeat_interleave(k, dim=1)
            cache.v[:, rows, :, longest - length : longest] = part.v.repeat_interleave(k, dim=1)
            logits[rows] = out.repeat_interleave(k, dim=0)
            if part.prev_embedding is not None:  # smear: each row carries its own prompt's last embedding
                if cache.prev_embedding is None:
                    cache.prev_embedding = part.prev_embedding.new_zeros((len(batch) * k, 1, model.config.n_embd))
                cache.prev_embedding[rows] = part.prev_embedding.repeat_interleave(k, dim=0)
        cache.advance(longest)
        return cache, logits

    def advance_rows(self, rows, sampled: list[int], stops, tools: bool) -> tuple[list[int], list[int]]:
        """One step's per-row rules: finished rows repeat their stop token, forced tool tokens come first, a stop
        token ends its row, and a tool call runs once its end token is sampled. Returns (tokens, masks)."""
        tokens, masks = [], []
        for row, token in zip(rows, sampled):
            if row.done:
                tokens.append(row.stop)
                masks.append(0)
                continue
            mask = 1
            if row.forced:
                token, mask = row.forced.popleft(), 0
            tokens.append(token)
            masks.append(mask)
            if token in stops:
                row.done, row.stop = True, token
            elif tools:
                self._tool_step(row, token)
        return tokens, masks

    def _tool_step(self, row: _Row, token: int) -> None:
        """Advance the python-call state machine of one row by one emitted token."""
        s = self.special
        if token == s["python_start"]:
            row.code = []
        elif row.code is not None and token == s["python_end"]:
            try:
                result = calculator(self.tokenizer.decode(row.code))
            except (KeyError, ValueError):  # ids the tokenizer does not know (a model with a larger vocab)
                result = "Error: undecodable code"
            row.code = None
            row.forced.extend([s["output_start"], *self.tokenizer.encode(result), s["output_end"]])
        elif row.code is not None:
            row.code.append(token)

    def generate_batch(self, prompts, num_samples=1, **kw) -> tuple[list[list[int]], list[list[int]]]:
        """Completions only (no prompt tokens; the terminating <|assistant_end|>/<|bos|> not included) and
        their masks, one per row (prompt-major order)."""
        stops = {self.special[n] for n in ("assistant_end", "bos") if n in self.special}
        results: list[list[int]] | None = None
        masks: list[list[int]] | None = None
        done: list[bool] = []
        for tokens, step_masks in self.generate(prompts, num_samples=num_samples, **kw):
            if results is None:
                results = [[] for _ in tokens]
                masks = [[] for _ in tokens]
                done = [False] * len(tokens)
            for i, (t, m) in enumerate(zip(tokens, step_masks)):
                if done[i]:
                    continue
                if t in stops:
                    done[i] = True
                    continue
                results[i].append(t)
                masks[i].append(m)
        if results is None:  # max_tokens == 0
            n = len(self._prepare_prompts(prompts, kw.get("truncate", "error"))) * num_samples
            return [[] for _ in range(n)], [[] for _ in range(n)]
        return results, masks
