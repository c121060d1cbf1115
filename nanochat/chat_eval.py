"""Chat-model evaluations (ARC-Easy/Challenge, MMLU, GSM8K, HumanEval, ...) and ChatCORE.

Two kinds of task (see nanochat.tasks.base):

- categorical (``task.eval_type == "categorical"``): the prompt is the conversation rendered up to
  <|assistant_start|>; one forward pass over a right-padded batch of prompts, and the answer is the argmax of the
  logits at each prompt's last position restricted to that conversation's answer ``letters``. No sampling.
- generative: greedy generation (temperature 0, at most `max_tokens` new tokens, one sample, tools on) through
  nanochat.engine.Engine, then ``task.evaluate(conversation, completion_text)``.

The one idea for multi-GPU runs: rank r takes problems r, r + world_size, ...; each rank counts (correct, total)
and one explicit all_reduce sums them, so every rank returns the same accuracy over all problems. ChatCORE is the
mean of centred accuracies ``(acc - b) / (1 - b)`` over the tasks present, with b = 0.25 for the
letter-choice tasks and 0 for the generative ones.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Sequence

import torch

from nanochat.common import NanochatError

# display name -> (registry name, options); the evaluation splits
CHAT_TASKS: dict[str, tuple[str, dict]] = {
    "ARC-Easy": ("arc_easy", {"split": "test"}),
    "ARC-Challenge": ("arc_challenge", {"split": "test"}),
    "MMLU": ("mmlu", {"split": "test"}),
    "GSM8K": ("gsm8k", {"split": "test"}),
    "HumanEval": ("humaneval", {}),
}
BASELINES = {"ARC-Easy": 0.25, "ARC-Challenge": 0.25, "MMLU": 0.25, "GSM8K": 0.0, "HumanEval": 0.0}


def build_eval_task(task_name: str, **options):
    """The task for a display name ("GSM8K") or a registry name ("gsm8k"); options such as local_path."""
    from nanochat.tasks import build_task

    lookup = {k.lower(): v for k, v in CHAT_TASKS.items()}
    name, fixed = lookup.get(task_name.lower(), (task_name, {}))
    return build_task(name, **{**fixed, **options})


def _dist() -> tuple[bool, int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return True, dist.get_rank(), dist.get_world_size()
    return False, 0, 1


def _model_device(model) -> torch.device:
    param = next(iter(model.parameters()), None) if hasattr(model, "parameters") else None
    return param.device if param is not None else torch.device("cpu")


def _letter_ids(tokenizer, letters: Sequence[str], cache: dict) -> list[int]:
    out = []
    for letter in letters:
        if letter not in cache:
            ids = tokenizer.encode(letter)
            if len(ids) != 1:
                raise NanochatError(f"answer letter {letter!r} is {len(ids)} tokens; it must be exactly one")
            cache[letter] = ids[0]
        out.append(cache[letter])
    return out


@torch.no_grad()
def _categorical_batch(model, tokenizer, task, conversations: list[dict], device, max_len, cache) -> int:
    from nanochat.chat import render_for_completion

    bos = tokenizer.bos_token_id
    prompts = []
    for conv in conversations:
        ids = render_for_completion(tokenizer, conv)
        prompts.append(ids[-max_len:] if max_len and len(ids) > max_len else ids)  # keep the answer position
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), bos, dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, : len(p)] = torch.tensor(p, dtype=torch.long)
    logits = model(ids.to(device))
    correct = 0
    for i, (conv, p) in enumerate(zip(conversations, prompts)):
        letters = conv.get("letters")
        if not letters:
            raise NanochatError(f"{getattr(task, 'name', 'task')}: categorical conversation without 'letters'")
        choice = logits[i, len(p) - 1, _letter_ids(tokenizer, letters, cache)].argmax().item()
        correct += int(bool(task.evaluate(conv, letters[choice])))
    return correct


def _generative_batch(engine, tokenizer, task, conversations: list[dict], max_tokens: int) -> int:
    from nanochat.chat import render_for_completion

    prompts = [render_for_completion(tokenizer, conv) for conv in conversations]
    completions, _ = engine.generate_batch(prompts, num_samples=1, max_tokens=max_tokens, temperature=0.0,
                                           truncate="left")
    return sum(int(bool(task.evaluate(conv, tokenizer.decode(c)))) for conv, c in zip(conversations, completions))


def evaluate_chat_task(task, model, tokenizer, max_problems: int | None = None, batch_size: int = 8,
                       max_tokens: int = 512, engine=None, progress: bool = True,
                       on_batch: Callable[[int, int], None] | None = None) -> dict:
    """{"correct", "total", "accuracy", "seconds"} of `model` on a task object (all ranks return the same).

    `engine` defaults to ``nanochat.engine.Engine(model, tokenizer)`` (generative tasks only).
    """
    import torch.distributed as dist
    from tqdm.auto import tqdm

    t0 = time.time()
    eval_type = task.eval_type
    if eval_type not in ("categorical", "generative"):
        raise NanochatError(f"unknown eval_type {eval_type!r} (expected categorical or generative)")
    n = len(task) if max_problems is None else min(len(task), max(0, int(max_problems)))
    distributed, rank, world = _dist()
    mine = list(range(rank, n, world))
    device = _model_device(model)
    cfg = getattr(model, "config", None)
    max_len = getattr(cfg, "sequence_len", None)
    if eval_type == "generative" and engine is None:
        from nanochat.engine import Engine

        engine = Engine(model, tokenizer)
    was_training = getattr(model, "training", False)
    if hasattr(model, "eval"):
        model.eval()
    cache: dict = {}
    correct = 0
    bar = tqdm(total=len(mine), desc=getattr(task, "name", "task"), unit="problem",
               disable=not progress or rank != 0, leave=False)
    try:
        for start in range(0, len(mine), max(1, batch_size)):
            convs = [task[i] for i in mine[start: start + max(1, batch_size)]]
            if eval_type == "categorical":
                correct += _categorical_batch(model, tokenizer, task, convs, device, max_len, cache)
            else:
                correct += _generative_batch(engine, tokenizer, task, convs, max_tokens)
            bar.update(len(convs))
            if on_batch is not None:
                on_batch(correct, start + len(convs))
    finally:
        bar.close()
        if was_training and hasattr(model, "train"):
            model.train()
    counts = torch.tensor([correct, len(mine)], dtype=torch.long, device=device)
    if distributed:
        dist.all_reduce(counts, op=dist.ReduceOp.SUM)
    total_correct, total = (int(x) for x in counts.tolist())
    return {"correct": total_correct, "total": total, "accuracy": total_correct / total if total else float("nan"),
            "seconds": time.time() - t0}


def run_chat_eval(task_name: str, model, tokenizer, max_problems: int | None = None, batch_size: int = 8,
                  task_options: dict | None = None, task=None, **kwargs: Any) -> float:
    """Accuracy of `model` on the task called `task_name` (or on `task` when given)."""
    if task is None:
        task = build_eval_task(task_name, **(task_options or {}))
    return evaluate_chat_task(task, model, tokenizer, max_problems=max_problems, batch_size=batch_size,
                              **kwargs)["accuracy"]


def chat_core(accuracies: dict[str, float]) -> float | None:
    """ChatCORE: mean centred accuracy over the known tasks present (None when there are none)."""
    centred = [(acc - BASELINES[name]) / (1.0 - BASELINES[name])
               for name, acc in accuracies.items() if name in BASELINES and acc == acc]
    return sum(centred) / len(centred) if centred else None


def run_chat_evals(model, tokenizer, tasks: Sequence[str] | None = None, max_problems: int | None = None,
                   batch_size: int = 8, task_options: dict[str, dict] | None = None, **kwargs: Any) -> dict:
    """Every task (default: the five ChatCORE tasks): {"tasks": {name: accuracy}, "ChatCORE": float | None}."""
    names = list(tasks) if tasks is not None else list(CHAT_TASKS)
    results = {}
    for name in names:
        results[name] = run_chat_eval(name, model, tokenizer, max_problems=max_problems, batch_size=batch_size,
                                      task_options=(task_options or {}).get(name), **kwargs)
    return {"tasks": results, "ChatCORE": chat_core(results)}
