"""Weight initialisation of the GPT: the reference's three schemes, with its exact order of random draws.

The one idea: the init draws are the only random numbers a build consumes, and each scheme draws them in the
order the reference's code of that date does, with its float expressions for the scales. So
`torch.manual_seed(S)` followed by `GPT.build(config)` gives the reference's initial weights bit for bit
(its tables are padded to a multiple of 64 rows: parity needs such a vocabulary, as 32,768 and 65,536 are).

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
"jul2026" (HEAD 92d63d4):
    1. wte                                       N(0, 0.8)
    2. lm_head                                   N(0, 0.001)
    3. for each layer: attn.c_q, attn.c_k, attn.c_v U(-s, s); mlp.c_fc U(-0.4 s, 0.4 s)
       (attn.c_proj, mlp.c_proj = 0)
    4. [resid_lambdas linear 1.15 -> 1.05 over the layers, x0_lambdas 0.20 -> 0.05]   (no draws)
    5. [smear_lambda = 0, backout_lambda = 0.2, smear_gate U(0, 0.02)]
    6. [value_embeds, ascending layer]           U(-s, s)
    7. [attn.ve_gate, each layer that has one]   U(0, 0.02)
In v0 and jan2026 the smear gate (this model's extension there) is drawn last, U(0, 0.02), with
smear_lambda 0 and backout_lambda 0.2. Bracketed items exist only with their switch on.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn


def _ramp(n: int, start: float, drop: float) -> list[float]:
    """start - drop * i / (n - 1) for each layer i, as the reference computes it (Python floats)."""
    return [start - (drop * i / max(n - 1, 1)) for i in range(n)]


def _init_smear(model, draw_gate: bool = True) -> None:
    if model.smear_lambda is not None:
        nn.init.zeros_(model.smear_lambda)
    if model.backout_lambda is not None:
        nn.init.constant_(model.backout_lambda, 0.2)
    if model.smear_gate is not None and draw_gate:
        nn.init.uniform_(model.smear_gate.weight, 0.0, 0.02)


def _init_v0(model) -> None:
    # pre-order walk: the leaves (the only modules with weights) come in the same order as apply()'s
    for module in model.modules():
        if module is model.smear_gate:
            continue
        if isinstance(module, nn.Linear):
            fan_out, fan_in = module.weight.shape
            std = 1.0 / math.sqrt(fan_in) * min(1.0, math.sqrt(fan_out / fan_in))
            nn.init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=1.0)
    nn.init.zeros_(model.lm_head.weight)
    for block in model.transformer.h:
        nn.init.zeros_(block.attn.c_proj.weight)
        nn.init.zeros_(block.mlp.c_proj.weight)
        if block.attn.ve_gate is not None:
            nn.init.zeros_(block.attn.ve_gate.weight)  # gate = 2 * sigmoid(0) = 1
    if model.resid_lambdas is not None:
        model.resid_lambdas.fill_(1.0)
        model.x0_lambdas.fill_(model.config.x0_init)
    _init_smear(model)


def _init_jan2026(model) -> None:
    s = 3**0.5 * model.config.n_embd**-0.5
    nn.init.normal_(model.transformer.wte.weight, mean=0.0, std=1.0)
    nn.init.normal_(model.lm_head.weight, mean=0.0, std=0.001)
    for block in model.transformer.h:
        for lin in (block.attn.c_q, block.attn.c_k, block.attn.c_v, block.mlp.c_fc):
            nn.init.uniform_(lin.weight, -s, s)
    if model.value_embeds is not None:
        for emb in model.value_embeds.values():
            nn.init.uniform_(emb.weight, -s, s)
    for block in model.transformer.h:
        nn.init.zeros_(block.attn.c_proj.weight)
        nn.init.zeros_(block.mlp.c_proj.weight)
        if block.attn.ve_gate is not None:
            nn.init.zeros_(block.attn.ve_gate.weight)
    if model.resid_lambdas is not None:
        model.resid_lambdas.fill_(1.0)
        model.x0_lambdas.fill_(model.config.x0_init)
    _init_smear(model)


def _init_jul2026(model) -> None:
    cfg = model.config
    s = 3**0.5 * cfg.n_embd**-0.5
    nn.init.normal_(model.transformer.wte.weight, mean=0.0, std=0.8)
    nn.init.normal_(model.lm_head.weight, mean=0.0, std=0.001)
    for block in model.transformer.h:
        nn.init.uniform_(block.attn.c_q.weight, -s, s)
        nn.init.uniform_(block.attn.c_k.weight, -s, s)
        nn.init.uniform_(block.attn.c_v.weight, -s, s)
        nn.init.zeros_(block.attn.c_proj.weight)
        nn.init.uniform_(block.mlp.c_fc.weight, -s * 0.4, s * 0.4)  # the reference's expression for the bound
        nn.init.zeros_(block.mlp.c_proj.weight)
    if model.resid_lambdas is not None:
        model.resid_lambdas.copy_(torch.tensor(_ramp(cfg.n_layer, 1.15, 0.10)))
        model.x0_lambdas.copy_(torch.tensor(_ramp(cfg.n_layer, 0.20, 0.15)))
    _init_smear(model)
    if model.value_embeds is not None:
        for emb in model.value_embeds.values():
            nn.init.uniform_(emb.weight, -s, s)
    for block in model.transformer.h:
        if block.attn.ve_gate is not None:
            nn.init.uniform_(block.attn.ve_gate.weight, 0.0, 0.02)  # gates start slightly above neutral


SCHEMES = {"v0": _init_v0, "jan2026": _init_jan2026, "jul2026": _init_jul2026}


@torch.no_grad()
def init_parameters(model) -> None:
    """Fill every parameter of `model` (a GPT) in place with the scheme named by `model.config.init`."""
    SCHEMES[model.config.init](model)
