"""Reinforcement learning on a verifiable reward (GSM8K): rollouts, rewards, advantages, the policy-gradient loss.

The one idea: on-policy REINFORCE with a group baseline. Every question is answered k times by the current
model; a sample's advantage is its reward minus the mean reward of its question's k samples, and the loss is
-advantage x log-prob of every token the model sampled, summed over the whole step and divided by the number of
such tokens (token-level normalisation): no KL term and no ratio clipping, since the data is on-policy. Prompt
tokens and tokens the calculator forced into a sample (mask 0) are never trained. A group whose samples all got
the same reward has zero advantage everywhere: it is skipped without a forward pass (the gradient is exactly
the same, the work is not) and counted. A non-finite reward drops its sample from the group (counted).

Rollouts are seeded from (seed, step, call), so a resumed run samples exactly what the uninterrupted one did.
Plain PyTorch: `nanochat.lit.rl_module` drives these pieces from a Lightning Trainer.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from nanochat.common import NanochatError


@dataclass
class Group:
    """One question answered k times. Completions hold the sampled tokens, including the stop token when one
    was sampled (the policy chose to stop, so that choice is trained too); masks: 1 = sampled, 0 = forced."""

    index: int
    prompt: list[int]
    completions: list[list[int]] = field(default_factory=list)
    masks: list[list[int]] = field(default_factory=list)
    rewards: list[float] = field(default_factory=list)
    truncated: list[bool] = field(default_factory=list)  # hit the token cap without sampling a stop token


@dataclass
class RolloutStats:
    """Counters of one batch of rollouts (summed over calls)."""

    questions: int = 0
    samples: int = 0
    sampled_tokens: int = 0  # mask-1 tokens the model chose
    forced_tokens: int = 0  # tool output forced into samples (mask 0)
    truncated: int = 0  # completions capped at max_new_tokens / the context
    long_prompts: int = 0  # questions skipped: the prompt alone fills the context
    nan_rewards: int = 0  # samples dropped because their reward was NaN/inf

    def add(self, other: "RolloutStats") -> None:
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))


def mix_seed(*parts: int) -> int:
    """A 63-bit seed from integers, stable across processes and Python versions (unlike hash())."""
    digest = hashlib.blake2b(repr(tuple(int(p) for p in parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def step_questions(num_questions: int, per_step: int, step: int) -> list[int]:
    """Question indices of one step: the (already shuffled) task read in order, wrapping around each epoch."""
    if num_questions <= 0:
        raise NanochatError("the RL training task has no questions")
    return [(step * per_step + j) % num_questions for j in range(per_step)]


def group_advantages(rewards: Sequence[float]) -> tuple[list[float], list[bool]]:
    """(advantage, valid) per sample: reward - mean reward of the group's valid samples.

    A non-finite reward makes its sample invalid (advantage 0, never trained, left out of the mean). When every
    valid reward is equal the advantages are exactly 0 (r - mean(r) need not be 0.0 in floating point).
    """
    valid = [isinstance(r, (int, float)) and math.isfinite(r) for r in rewards]
    good = [float(r) for r, ok in zip(rewards, valid) if ok]
    if not good or all(r == good[0] for r in good):
        return [0.0] * len(rewards), valid
    mean = math.fsum(good) / len(good)
    return [float(r) - mean if ok else 0.0 for r, ok in zip(rewards, valid)], valid


@dataclass
class TrainRows:
    """The rows one optimizer step trains on, and the step's token-normalisation count."""

    tokens: list[list[int]]  # prompt + completion
    masks: list[list[int]]  # 1 where the token is a trained target (sampled), per token
    advantages: list[float]
    num_tokens: int  # sampled tokens of every valid sample of the step (zero-advantage groups included)
    zero_adv_groups: int  # groups skipped because all their rewards were equal

    def chunks(self, size: int):
        """Row index lists of at most `size` rows, longest rows together (less padding per forward)."""
        order = sorted(range(len(self.tokens)), key=lambda i: -len(self.tokens[i]))
        for i in range(0, len(order), size):
            yield order[i : i + size]


def build_train_rows(groups: Sequence[Group]) -> TrainRows:
    """Rows with a non-zero advantage; the normaliser counts every valid sampled token of the step.

    Counting the skipped groups' tokens in the normaliser keeps the loss equal to the full-batch loss (their
    terms are exactly zero), so skipping them only saves work.
    """
    rows = TrainRows([], [], [], 0, 0)
    for g in groups:
        advantages, valid = group_advantages(g.rewards)
        if sum(valid) and all(a == 0.0 for a, ok in zip(advantages, valid) if ok):
            rows.zero_adv_groups += 1
        for completion, mask, adv, ok in zip(g.completions, g.masks, advantages, valid):
            if not ok:
                continue
            rows.num_tokens += sum(mask)
            if adv != 0.0 and sum(mask):
                rows.tokens.append(list(g.prompt) + list(completion))
                rows.masks.append([0] * len(g.prompt) + list(mask))
                rows.advantages.append(adv)
    return rows


def pack_rows(tokens: Sequence[Sequence[int]], masks: Sequence[Sequence[int]], advantages: Sequence[float],
              pad_id: int, device=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(inputs, targets, advantages) tensors: targets are the next tokens, -1 where not trained or padding."""
    width = max(len(t) for t in tokens) - 1
    inputs = torch.full((len(tokens), width), pad_id, dtype=torch.long)
    targets = torch.full((len(tokens), width), -1, dtype=torch.long)
    for i, (t, m) in enumerate(zip(tokens, masks)):
        n = len(t) - 1
        inputs[i, :n] = torch.tensor(t[:-1])
        tgt = torch.tensor(t[1:])
        tgt[torch.tensor(m[1:]) == 0] = -1
        targets[i, :n] = tgt
    adv = torch.tensor(list(advantages), dtype=torch.float32)
    return inputs.to(device), targets.to(device), adv.to(device)


def policy_loss(model, inputs: torch.Tensor, targets: torch.Tensor, advantages: torch.Tensor,
                num_tokens: float) -> torch.Tensor:
    """sum over trained tokens of -advantage x log p(token), divided by the step's sampled-token count.

    -log p is the cross-entropy the model returns per position (0 where the target is -1), so the loss is
    sum(advantage x nll) / num_tokens. Summing this over a step's chunks gives the full-step loss.
    """
    nll = model(inputs, targets, loss_reduction="none")  # (B, T) fp32
    return (nll * advantages.to(nll.dtype)[:, None]).sum() / max(float(num_tokens), 1.0)


# -- sampling ---------------------------------------------------------------------------------------------------
def collect_rollouts(engine, tokenizer, task, indices: Sequence[int], *, num_samples: int, max_new_tokens: int,
                     temperature: float, top_k: int | None, seed: int, rows_per_call: int, context_len: int,
                     score: Callable[[dict, str], float] | None = None) -> tuple[list[Group], RolloutStats]:
    """Sample `num_samples` completions per question (calculator on) and score them with `score`
    (default `task.reward`). Several questions share one generation call, up to `rows_per_call` rows; call c
    uses seed mix_seed(seed, c). Completions are capped so prompt + completion fits `context_len`.
    """
    from nanochat.chat import render_for_completion

    score = score or task.reward
    special = getattr(engine, "special", {}) or {}
    stops = {special[n] for n in ("assistant_end", "bos") if n in special}
    stats = RolloutStats()
    pending: list[tuple[dict, Group]] = []
    for i in indices:
        conversation = task[i]
        prompt = render_for_completion(tokenizer, conversation)
        if len(prompt) >= context_len:
            stats.long_prompts += 1
            continue
        pending.append((conversation, Group(index=int(i), prompt=prompt)))
    per_call = max(1, rows_per_call // num_samples)
    for call, start in enumerate(range(0, len(pending), per_call)):
        batch = pending[start : start + per_call]
        cap = min(max_new_tokens, context_len - max(len(g.prompt) for _, g in batch))
        n_rows = len(batch) * num_samples
        seqs = [[] for _ in range(n_rows)]
        masks = [[] for _ in range(n_rows)]
        done = [False] * n_rows
        for tokens, step_masks in engine.generate([g.prompt for _, g in batch], num_samples=num_samples,
                                                  max_tokens=cap, temperature=temperature, top_k=top_k,
                                                  seed=mix_seed(seed, call), use_tools=True):
            for r, (t, m) in enumerate(zip(tokens, step_masks)):
                if done[r]:
                    continue
                seqs[r].append(t)
                masks[r].append(m)
                done[r] = t in stops
        for q, (conversation, g) in enumerate(batch):
            for s in range(num_samples):
                r = q * num_samples + s
                ended = bool(seqs[r]) and seqs[r][-1] in stops
                text = tokenizer.decode(seqs[r][:-1] if ended else seqs[r])
                reward = score(conversation, text)
                g.completions.append(seqs[r])
                g.masks.append(masks[r])
                g.rewards.append(reward)
                g.truncated.append(not ended)
                stats.samples += 1
                stats.sampled_tokens += sum(masks[r])
                stats.forced_tokens += len(masks[r]) - sum(masks[r])
                stats.truncated += int(not ended)
                stats.nan_rewards += int(not (isinstance(reward, (int, float)) and math.isfinite(reward)))
            stats.questions += 1
    return [g for _, g in pending], stats


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct: 1 - C(n-c, k) / C(n, k) (Chen et al. 2021)."""
    if not 0 < k <= n:
        raise NanochatError(f"pass@k needs 0 < k <= n samples, got k={k}, n={n}")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def evaluate_pass_at_k(engine, tokenizer, task, indices: Sequence[int], *, num_samples: int, max_new_tokens: int,
                       temperature: float, top_k: int | None, seed: int, rows_per_call: int,
                       context_len: int) -> dict[str, float]:
    """pass@1..num_samples (unbiased estimator, mean over questions) with `task.evaluate` as the judge."""
    groups, stats = collect_rollouts(
        engine, tokenizer, task, indices, num_samples=num_samples, max_new_tokens=max_new_tokens,
        temperature=temperature, top_k=top_k, seed=seed, rows_per_call=rows_per_call, context_len=context_len,
        score=lambda conversation, text: float(task.evaluate(conversation, text)))
    out = {}
    for k in range(1, num_samples + 1):
        scores = [pass_at_k(num_samples, sum(r > 0 for r in g.rewards), k) for g in groups]
        out[f"pass@{k}"] = math.fsum(scores) / len(scores) if scores else float("nan")
    out["questions"] = float(len(groups))
    out["truncated"] = float(stats.truncated)
    return out
