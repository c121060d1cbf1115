"""Bits per byte: the one tokenizer-independent loss used for validation everywhere.

    bpb = sum of per-token losses in nats / (ln 2 * sum of UTF-8 bytes of the target tokens)

Dividing by bytes instead of tokens makes models with different vocabularies comparable. Targets < 0 (padding,
masked positions) and targets with 0 bytes (special tokens such as <|bos|>) count in neither sum. `bpb_sums`
returns the two sums as tensors so that callers (the evaluation loop below, the Lightning module) can add them
up over batches and all-reduce them across ranks before dividing once.
"""
from __future__ import annotations

import math
from typing import Iterable

import torch
import torch.distributed as dist


def bpb_sums(nats: torch.Tensor, targets: torch.Tensor, token_bytes: torch.Tensor
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of nats, sum of target bytes) over the positions that count.

    nats: (B, T) per-token cross-entropy in nats (any value at ignored positions); targets: (B, T) token ids,
    < 0 = ignored; token_bytes: (V,) UTF-8 byte length of every token, 0 for special tokens.
    Both sums are float64 scalars on `nats`' device.
    """
    if nats.shape != targets.shape:
        raise ValueError(f"nats {tuple(nats.shape)} and targets {tuple(targets.shape)} must have the same shape")
    token_bytes = token_bytes.to(device=targets.device)
    valid = targets >= 0
    safe = torch.where(valid, targets, torch.zeros_like(targets))
    nbytes = torch.where(valid, token_bytes[safe], torch.zeros_like(safe, dtype=token_bytes.dtype))
    counted = nbytes > 0
    # torch.where (not a multiply) so that a NaN/inf at an ignored position cannot leak into the sum
    sum_nats = torch.where(counted, nats.double(), torch.zeros((), dtype=torch.float64, device=nats.device)).sum()
    sum_bytes = nbytes.to(torch.float64).sum()
    return sum_nats, sum_bytes.to(sum_nats.device)


def bpb_from_sums(sum_nats: float | torch.Tensor, sum_bytes: float | torch.Tensor) -> float:
    """Bits per byte from the two sums; inf when no target byte was seen (as the reference returns)."""
    sum_nats, sum_bytes = float(sum_nats), float(sum_bytes)
    if sum_bytes <= 0:
        return float("inf")
    return sum_nats / (math.log(2) * sum_bytes)


@torch.no_grad()
def evaluate_bpb(model, batches: Iterable, token_bytes: torch.Tensor, max_steps: int | None = None) -> float:
    """Bits per byte of `model` over `batches` of (inputs, targets), each (B, T).

    The model is called as ``model(x, targets=y, loss_reduction="none")`` and must return (B, T) nats (the nanochat
    GPT does). When torch.distributed is initialised the sums are all-reduced, so every rank returns the same
    value for the union of the ranks' batches.
    """
    total_nats = total_bytes = None
    for step, (x, y) in enumerate(batches):
        if max_steps is not None and step >= max_steps:
            break
        nats = model(x, targets=y, loss_reduction="none")
        n, b = bpb_sums(nats, y, token_bytes)
        total_nats = n if total_nats is None else total_nats + n
        total_bytes = b if total_bytes is None else total_bytes + b
    if total_nats is None:
        param = next(iter(model.parameters()), None) if hasattr(model, "parameters") else None
        device = param.device if param is not None else torch.device("cpu")
        total_nats = torch.zeros((), dtype=torch.float64, device=device)
        total_bytes = torch.zeros((), dtype=torch.float64, device=device)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        sums = torch.stack([total_nats, total_bytes])
        dist.all_reduce(sums, op=dist.ReduceOp.SUM)
        total_nats, total_bytes = sums[0], sums[1]
    return bpb_from_sums(total_nats, total_bytes)
