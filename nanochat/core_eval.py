"""CORE (DCLM, arXiv 2406.11794): in-context-learning accuracy of a base model, scored as the reference does.

The tasks and their rows come from the eval bundle (`nanochat.core_bundle`: download, task list, rows shuffled
with ``random.Random(1337)`` and cut to `max_per_task`). Example i gets ``random.Random(1234 + i).sample``
few-shot examples from the other rows. Every prompt starts with <|bos|>:

- multiple_choice: one prompt per choice ``fewshot + query + delimiter + choice``; the choices' tokens after their
  common prefix are scored; the lowest *mean* token loss wins.
- schema: one prompt per context option ``fewshot + option + delimiter + continuation``; the common token suffix
  is scored; lowest mean loss wins.
- language_modeling: ``fewshot + context.strip() + delimiter + continuation``; correct when greedy argmax
  reproduces every continuation token.

Prompts longer than the model's context keep their last tokens. The one idea: an example is a few rows of tokens
plus (start, end) spans to score, so rows of many examples can share one padded forward pass (`batch_size`
examples at a time, BOS as padding on the right, which a causal model never sees) without changing any score.
Task accuracy is centered as ``(acc - b) / (1 - b)`` with b = baseline / 100, and CORE is the mean over tasks.
"""
from __future__ import annotations

import math
import os
import random
import time
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

from nanochat.common import NanochatError
from nanochat.core_bundle import EVAL_BUNDLE_URL, TaskSpec, load_bundle, load_task_data

__all__ = ["EVAL_BUNDLE_URL", "TaskError", "TaskSpec", "build_examples", "centered", "crop_left",
           "evaluate_core", "evaluate_task", "fewshot_indices", "load_bundle", "load_task_data", "render_prompts",
           "row_problem", "score_examples"]

FEWSHOT_SEED = 1234


class TaskError(NanochatError):
    """One task cannot be scored (a row that does not match its type's schema); the other tasks can."""


# -----------------------------------------------------------------------------------------------------------------
# Rows, few-shot examples, prompts, tokens


def _is_str_list(x) -> bool:
    return isinstance(x, list) and len(x) > 0 and all(isinstance(c, str) for c in x)


def _gold_ok(row: dict, options: list) -> bool:
    gold = row.get("gold")
    return isinstance(gold, int) and not isinstance(gold, bool) and 0 <= gold < len(options)


def row_problem(task_type: str, row) -> str | None:
    """Why `row` does not fit its task type's schema, or None."""
    if not isinstance(row, dict):
        return "not a JSON object"
    if task_type == "multiple_choice":
        if not isinstance(row.get("query"), str) or not _is_str_list(row.get("choices")):
            return "needs a string 'query' and a non-empty list of strings 'choices'"
        return None if _gold_ok(row, row["choices"]) else "needs an integer 'gold' indexing 'choices'"
    if task_type == "schema":
        if not _is_str_list(row.get("context_options")) or not isinstance(row.get("continuation"), str):
            return "needs a non-empty list of strings 'context_options' and a string 'continuation'"
        return None if _gold_ok(row, row["context_options"]) else "needs an integer 'gold' indexing 'context_options'"
    if task_type == "language_modeling":
        if not isinstance(row.get("context"), str) or not isinstance(row.get("continuation"), str):
            return "needs string 'context' and 'continuation'"
        return None if row["continuation"] else "has an empty 'continuation'"
    return f"unknown task type {task_type!r}"


def fewshot_indices(idx: int, n: int, k: int) -> list[int]:
    """Few-shot rows for example `idx` of `n`: ``Random(1234 + idx).sample`` of the others (at most n - 1)."""
    k = min(k, n - 1)
    if k <= 0:
        return []
    others = [i for i in range(n) if i != idx]
    return random.Random(FEWSHOT_SEED + idx).sample(others, k)


def render_prompts(task_type: str, item: dict, delimiter: str, fewshot: Sequence[dict] = ()) -> list[str]:
    """Prompt texts: one per choice (MC), one per context option (schema), [without, with] continuation (LM)."""
    if task_type == "multiple_choice":
        shots = "".join(f"{ex['query']}{delimiter}{ex['choices'][ex['gold']]}\n\n" for ex in fewshot)
        return [f"{shots}{item['query']}{delimiter}{choice}" for choice in item["choices"]]
    if task_type == "schema":
        shots = "".join(f"{ex['context_options'][ex['gold']]}{delimiter}{ex['continuation']}\n\n" for ex in fewshot)
        return [f"{shots}{option}{delimiter}{item['continuation']}" for option in item["context_options"]]
    if task_type == "language_modeling":
        shots = "".join(f"{ex['context'].strip()}{delimiter}{ex['continuation']}\n\n" for ex in fewshot)
        prefix = f"{shots}{item['context'].strip()}{delimiter}"
        # stripped so that trailing whitespace is not a token of its own that the full prompt would merge
        return [prefix.strip(), prefix + item["continuation"]]
    raise ValueError(f"unknown task type {task_type!r}")


def common_length(seqs: Sequence[Sequence[int]], from_end: bool = False) -> int:
    """Length of the common prefix (or suffix) of token sequences."""
    n = min(len(s) for s in seqs)
    for i in range(n):
        j = -1 - i if from_end else i
        if any(s[j] != seqs[0][j] for s in seqs):
            return i
    return n


@dataclass
class Example:
    rows: list[list[int]]
    spans: list[tuple[int, int]]  # per row: tokens [start, end) are scored, predicted from positions start-1..
    gold: int | None


def spans_for(task_type: str, tokens: list[list[int]]) -> list[tuple[int, int]]:
    if task_type == "multiple_choice":
        start = common_length(tokens)
        return [(start, len(t)) for t in tokens]
    if task_type == "schema":
        suffix = common_length(tokens, from_end=True)
        return [(len(t) - suffix, len(t)) for t in tokens]
    without, with_ = tokens
    if not (len(without) < len(with_) and with_[: len(without)] == without):
        raise TaskError("the prompt without its continuation does not tokenize to a prefix of the full prompt")
    return [(len(without), len(with_))]


def crop_left(tokens: list[int], start: int, end: int, max_len: int | None) -> tuple[list[int], int, int]:
    """Keep the last `max_len` tokens and shift the span (the first kept token has no prediction: start >= 1)."""
    if max_len is None or len(tokens) <= max_len:
        return tokens, start, end
    cut = len(tokens) - max_len
    return tokens[cut:], max(1, start - cut), end - cut


def build_examples(tokenizer, spec: TaskSpec, data: list[dict], indices: Sequence[int],
                   max_len: int | None) -> list[Example]:
    bos = _bos_id(tokenizer)
    prompts, counts = [], []
    for idx in indices:
        shots = [data[i] for i in fewshot_indices(idx, len(data), spec.num_fewshot)]
        p = render_prompts(spec.task_type, data[idx], spec.continuation_delimiter, shots)
        prompts += p
        counts.append(len(p))
    tokens = tokenizer.encode(prompts, prepend=bos) if prompts else []
    out, pos = [], 0
    for idx, count in zip(indices, counts):
        toks = tokens[pos: pos + count]
        pos += count
        spans = spans_for(spec.task_type, toks)
        if spec.task_type == "language_modeling":
            toks = toks[1:]  # only the full prompt is run
        rows, cropped = [], []
        for t, (s, e) in zip(toks, spans):
            t, s, e = crop_left(t, s, e, max_len)
            rows.append(t)
            cropped.append((s, e))
        out.append(Example(rows, cropped, data[idx].get("gold")))
    return out


def _bos_id(tokenizer) -> int:
    if hasattr(tokenizer, "bos_token_id"):
        return int(tokenizer.bos_token_id)
    return int(tokenizer.get_bos_token_id())


# -----------------------------------------------------------------------------------------------------------------
# Scoring


@torch.no_grad()
def score_examples(model, examples: list[Example], task_type: str, pad_id: int, device) -> list[bool]:
    """One padded forward pass over all rows of `examples`; whether each example is answered correctly."""
    rows = [r for ex in examples for r in ex.rows]
    spans = [sp for ex in examples for sp in ex.spans]
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
    ids = ids.to(device)
    logits = model(ids)
    # gather only the scored positions: position p predicts token p + 1
    row_idx = torch.cat([torch.full((e - s,), i, dtype=torch.long) for i, (s, e) in enumerate(spans)])
    pos_idx = torch.cat([torch.arange(s - 1, e - 1) for s, e in spans])
    row_idx, pos_idx = row_idx.to(device), pos_idx.to(device)
    picked = logits[row_idx, pos_idx]  # (P, V)
    targets = ids[row_idx, pos_idx + 1]
    lengths = [e - s for s, e in spans]
    if task_type == "language_modeling":
        hits = (picked.argmax(dim=-1) == targets).split(lengths)
        per_row = torch.stack([h.all() for h in hits]).tolist()
        return [bool(ok) for ok in per_row]
    losses = F.cross_entropy(picked.float(), targets, reduction="none").split(lengths)
    means = torch.stack([lo.mean() for lo in losses]).tolist()
    out, k = [], 0
    for ex in examples:
        scores = means[k: k + len(ex.rows)]
        k += len(ex.rows)
        out.append(scores.index(min(scores)) == ex.gold)  # first lowest mean loss, as the reference picks
    return out


def _batches(examples: list[Example], batch_size: int, max_batch_tokens: int | None):
    """Groups of examples of similar length: at most batch_size examples and (rows x width) <= max_batch_tokens."""
    widths = [max(len(r) for r in ex.rows) for ex in examples]
    group, n_rows, width = [], 0, 0
    for i in sorted(range(len(examples)), key=widths.__getitem__):
        rows, w = len(examples[i].rows), max(width, widths[i])
        too_big = max_batch_tokens is not None and (n_rows + rows) * w > max_batch_tokens
        if group and (len(group) >= batch_size or too_big):
            yield group
            group, n_rows, w = [], 0, widths[i]
        group.append(i)
        n_rows += rows
        width = w
    if group:
        yield group


def _model_device(model):
    param = next(iter(model.parameters()), None) if hasattr(model, "parameters") else None
    return param.device if param is not None else torch.device("cpu")


def _context_len(model) -> int | None:
    cfg = getattr(model, "config", None)
    if cfg is not None and getattr(cfg, "sequence_len", None):
        return int(cfg.sequence_len)
    return getattr(model, "max_seq_len", None)


def centered(accuracy: float, random_baseline_pct: float) -> float:
    b = 0.01 * random_baseline_pct
    return (accuracy - b) / (1.0 - b)


def evaluate_task(model, tokenizer, spec: TaskSpec, data: list[dict], batch_size: int = 16,
                  device=None, max_seq_len: int | None = None, max_batch_tokens: int | None = 16384,
                  chunk: int = 512, progress: bool = True) -> dict:
    """Accuracy of `model` on one task's (already shuffled and cut) rows.

    `batch_size` examples share a forward pass (1 = the reference's one example at a time). `max_seq_len`
    defaults to the model's context (``model.config.sequence_len``). Under torch.distributed each rank scores
    every world_size-th example and the counts are all-reduced. Returns {"accuracy", "centered", "n",
    "seconds"}; raises TaskError when a row does not fit the task type (on every rank).
    """
    import torch.distributed as dist
    from tqdm.auto import tqdm

    t0 = time.time()
    device = torch.device(device) if device is not None else _model_device(model)
    max_len = max_seq_len if max_seq_len is not None else _context_len(model)
    for i, row in enumerate(data):  # few-shot examples can be any row: all must be valid
        problem = row_problem(spec.task_type, row)
        if problem is not None:
            raise TaskError(f"task {spec.label}: row {i} (after shuffling) {problem}")
    distributed = dist.is_available() and dist.is_initialized()
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    mine = list(range(rank, len(data), world))
    correct, error = 0, None
    was_training = getattr(model, "training", False)
    if hasattr(model, "eval"):
        model.eval()
    bar = tqdm(total=len(mine), desc=spec.label, unit="ex", disable=not progress or rank != 0, leave=False)
    try:
        for c in range(0, len(mine), chunk):
            examples = build_examples(tokenizer, spec, data, mine[c: c + chunk], max_len)
            for group in _batches(examples, max(1, batch_size), max_batch_tokens):
                correct += sum(score_examples(model, [examples[i] for i in group], spec.task_type,
                                              _bos_id(tokenizer), device))
                bar.update(len(group))
    except TaskError as e:
        if not distributed:
            raise
        error = str(e)  # still take part in the all-reduce below, so that no rank waits forever
    finally:
        bar.close()
        if was_training and hasattr(model, "train"):
            model.train()
    counts = torch.tensor([correct, len(mine), error is not None], dtype=torch.float64, device=device)
    if distributed and world > 1:
        dist.all_reduce(counts, op=dist.ReduceOp.SUM)
    n_correct, n, failed = counts.tolist()
    if failed:
        raise TaskError(error or f"task {spec.label}: failed on another rank")
    accuracy = n_correct / n if n else float("nan")
    return {"accuracy": accuracy, "centered": centered(accuracy, spec.random_baseline), "n": int(n),
            "seconds": time.time() - t0}


def evaluate_core(model, tokenizer, bundle_dir: str | os.PathLike | None = None, max_per_task: int | None = None,
                  batch_size: int = 16, device=None, url: str = EVAL_BUNDLE_URL, tasks: Sequence[str] | None = None,
                  progress: bool = True, **kwargs) -> dict:
    """CORE of `model`: {"core", "tasks": {label: {"accuracy", "centered", "n", ...}}, "failed": [labels]}.

    All task files are read before any scoring, so a corrupt file stops the run at once (NanochatError). A task
    whose rows do not match its schema is reported with "error" and left out of the mean; the rest complete.
    `tasks` restricts the evaluation to those labels. Extra keyword arguments go to `evaluate_task`.
    """
    specs = load_bundle(bundle_dir, url=url, progress=progress)
    if tasks is not None:
        unknown = sorted(set(tasks) - {s.label for s in specs})
        if unknown:
            raise NanochatError(f"unknown CORE task(s): {', '.join(unknown)}")
        specs = [s for s in specs if s.label in set(tasks)]
    data = {s.label: load_task_data(s, max_per_task) for s in specs}
    results: dict[str, dict] = {}
    for spec in specs:
        try:
            results[spec.label] = evaluate_task(model, tokenizer, spec, data[spec.label], batch_size=batch_size,
                                                device=device, progress=progress, **kwargs)
        except TaskError as e:
            results[spec.label] = {"accuracy": None, "centered": None, "n": 0, "error": str(e)}
    done = [r["centered"] for r in results.values() if r["centered"] is not None and math.isfinite(r["centered"])]
    return {"core": sum(done) / len(done) if done else None, "tasks": results,
            "failed": [label for label, r in results.items() if r["centered"] is None]}
