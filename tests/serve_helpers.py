"""Test utilities for the chat server, web UI and CLI: a tiny exported model and a scripted engine."""
from __future__ import annotations

import time
from pathlib import Path


def export_tiny_model(directory: Path, seed: int = 0, stage: str = "sft") -> Path:
    """A depth-1 random GPT (byte-level tokenizer, context 128) saved as a model folder.

    The weights are perturbed after init: zero-initialised projections and head would make every
    token equally likely and every seed give the same nothing.
    """
    import torch

    from nanochat.checkpoint import export_model
    from nanochat.gpt import GPT, GPTConfig
    from nanochat.tokenizer import Tokenizer

    torch.manual_seed(seed)
    model = GPT(GPTConfig(sequence_len=128, vocab_size=265, n_layer=1, n_head=2, n_kv_head=2, n_embd=64))
    model.init_weights()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    return export_model(model, Tokenizer.byte_level(), directory, meta={"stage": stage})


class ScriptedEngine:
    """Engine stand-in that 'samples' a fixed text (one byte-level token per step), for exact streaming checks.

    Same interface as nanochat.engine.Engine.generate; row r emits the script's bytes, then <|assistant_end|>.
    `delay` seconds per step imitates a slow model (queueing and browser streaming tests).
    """

    def __init__(self, tokenizer, text: str, delay: float = 0.0):
        self.tokenizer = tokenizer
        self.ids = tokenizer.encode(text)
        self.end = tokenizer.encode_special("<|assistant_end|>")
        self.delay = delay
        self.calls = 0

    def generate(self, prompts, num_samples=1, max_tokens=256, **kw):
        self.calls += 1
        n = len(prompts) * num_samples
        script = self.ids + [self.end]
        for step in range(min(max_tokens, len(script))):
            if self.delay:
                time.sleep(self.delay)
            yield [script[step]] * n, [1] * n
