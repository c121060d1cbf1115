"""CORE (DCLM, arXiv 2406.11794): in-context-learning accuracy of a base model, scored as the reference does.

The tasks and their rows come from the eval bundle (`nanochat.core_bundle`: task list, rows shuffled with
``random.Random(1337)`` and cut to `max_per_task`). Example i gets ``random.Random(1234 + i).sample`` of the
other rows as its few-shot examples; a task with fewer rows than its few-shot count + 1 is an error naming the
task (the reference fails there too, inside ``random.sample``). Every prompt starts with <|bos|> and is tokenized whole, so the boundary between prompt and answer lies
wherever the tokenizer puts it; the scored tokens are found in token space:

- multiple_choice: one prompt per choice ``fewshot + query + delimiter + choice`` (each shot
  ``query + delimiter + gold choice + "\\n\\n"``); the tokens after the choices' common token prefix are scored;
  the first lowest *mean* token loss wins.
- schema: one prompt per context option ``fewshot + option + delimiter + continuation``; the common token suffix
  is scored; the first lowest mean loss wins.
- language_modeling: ``fewshot + context.strip() + delimiter + continuation`` (shots likewise, contexts
  stripped); the prompt without its continuation, stripped, must tokenize to a prefix of the full one; correct
  when greedy argmax reproduces every continuation token.

Task accuracy is centered as ``(acc - b) / (1 - b)`` with b = random baseline / 100; CORE is their mean.

`prompts` says what the model is shown:

- "full" (default, the reference's): the whole few-shot prompt, however far it runs past the training context
  (GPT's rotary table covers 10x the context; attention windows keep their trained widths). A prompt longer
  than the model's position limit (`GPT.rotary_len`, else a `max_seq_len` attribute) keeps its last tokens,
  with a warning, and is counted in the task's "cropped": the reference fails on such a prompt (GPT: an
  assertion) or crops it silently (a model with `max_seq_len`), so no reference figure exists to match there.
- "crop": every prompt keeps its last `max_seq_len` tokens (default: the model's context), so the model never
  sees more than it was trained on. The span keeps at least one token of context. Not the reference's CORE.

What differs from the reference (``nanochat/core_eval.py`` and ``scripts/base_eval.py`` at 92d63d4), checked
example for example against it on the shared task files; with ``batch_size=1`` none of it changes a score in
full mode:

- Speed: `batch_size` examples share one right-padded forward pass (BOS as padding, which a causal model never
  attends to), and losses are computed only at the scored positions. The numbers are the same math, but a
  float kernel may round differently for another batch shape, which can flip an exact near-tie; with
  ``batch_size=1`` the model gets the reference's own tensors (one example, padded to its longest row).
- Accuracy is ``correct / n`` in float64; the reference takes a float32 mean (the figures differ below 1e-7).
- Bad data fails one task, not the run: a row that does not fit its type's schema (the reference would raise a
  KeyError mid-task or index with a bad gold) makes its task "failed" and CORE is the mean of the others. Blank
  lines in a task file are skipped (the reference cannot parse them).

The one idea of the implementation: an example is a few rows of tokens plus (start, end) spans to score, so rows
of many examples can share one padded forward pass without changing any score.
"""
from __future__ import annotations

import math
import os
import random
import sys
import time
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

from nanochat.common import NanochatError
from nanochat.core_bundle import EVAL_BUNDLE_URL, TaskSpec, load_bundle, load_task_data

__all__ = ["EVAL_BUNDLE_URL", "PROMPT_MODES", "TaskError", "TaskSpec", "build_examples", "centered",
           "check_fewshot", "crop_left", "evaluate_core", "evaluate_task", "example_results", "fewshot_indices",
           "load_bundle", "load_task_data", "render_prompts", "row_problem", "score_examples"]

FEWSHOT_SEED = 1234
PROMPT_MODES = ("full", "crop")


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
    """Few-shot rows for example `idx` of `n`: ``Random(1234 + idx).sample(others, k)``; needs k < n."""
    if k <= 0:
        return []
    if k >= n:
        raise ValueError(f"{k} few-shot examples need at least {k + 1} rows, got {n}")
    others = [i for i in range(n) if i != idx]
    return random.Random(FEWSHOT_SEED + idx).sample(others, k)


def check_fewshot(spec: TaskSpec, n_rows: int) -> str | None:
    """Why a task of `n_rows` rows cannot be scored with its few-shot count (example i draws from the others)."""
    if n_rows >= spec.num_fewshot + 1:
        return None
    return (f"task {spec.label} has {n_rows} rows, but its {spec.num_fewshot}-shot prompts need at least "
            f"{spec.num_fewshot + 1}")


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
    cropped: bool = False  # a row lost its first tokens to the length limit


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
    """Examples data[i] for i in `indices`, every row cropped on the left to `max_len` tokens (None: whole)."""
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
        rows, kept = [], []
        for t, (s, e) in zip(toks, spans):
            t, s, e = crop_left(t, s, e, max_len)
            rows.append(t)
            kept.append((s, e))
        cut = max_len is not None and any(len(t) > max_len for t in toks)
        out.append(Example(rows, kept, data[idx].get("gold"), cut))
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
    """The context the model was trained on (crop mode's length)."""
    cfg = getattr(model, "config", None)
    if cfg is not None and getattr(cfg, "sequence_len", None):
        return int(cfg.sequence_len)
    return getattr(model, "max_seq_len", None)


def _position_limit(model) -> int | None:
    """The longest sequence the model can run at all (full mode's length): its rotary table, else max_seq_len."""
    for name in ("rotary_len", "max_seq_len"):
        value = getattr(model, name, None)
        if value:
            return int(value)
    return None


def _check_mode(prompts: str) -> None:
    if prompts not in PROMPT_MODES:
        raise NanochatError(f"CORE prompts must be one of {', '.join(PROMPT_MODES)}, got {prompts!r}")


def centered(accuracy: float, random_baseline_pct: float) -> float:
    b = 0.01 * random_baseline_pct
    return (accuracy - b) / (1.0 - b)


def example_results(model, tokenizer, spec: TaskSpec, data: list[dict], indices: Sequence[int] | None = None,
                    prompts: str = "full", max_seq_len: int | None = None, batch_size: int = 16, device=None,
                    max_batch_tokens: int | None = 16384, chunk: int = 512, on_done=None) -> tuple[list[bool], int]:
    """Whether each example data[i], i in `indices` (default: all), is answered correctly, and how many were cropped.

    `prompts`/`max_seq_len` as in the module docstring; `on_done(k)` is told as examples finish. The model is
    used as it is (call ``model.eval()`` first); the rows must already have passed `row_problem`.
    """
    _check_mode(prompts)
    indices = list(range(len(data))) if indices is None else list(indices)
    device = torch.device(device) if device is not None else _model_device(model)
    if prompts == "crop":
        max_len = max_seq_len if max_seq_len is not None else _context_len(model)
    elif max_seq_len is not None:
        raise NanochatError("max_seq_len is the length of prompts='crop'; full prompts run whole")
    else:
        max_len = _position_limit(model)
    results: list[bool] = []
    cropped = 0
    for c in range(0, len(indices), chunk):
        examples = build_examples(tokenizer, spec, data, indices[c: c + chunk], max_len)
        cropped += sum(ex.cropped for ex in examples)
        got = [False] * len(examples)
        for group in _batches(examples, max(1, batch_size), max_batch_tokens):
            scores = score_examples(model, [examples[i] for i in group], spec.task_type, _bos_id(tokenizer), device)
            for i, ok in zip(group, scores):
                got[i] = ok
            if on_done is not None:
                on_done(len(group))
        results += got
    return results, cropped


def evaluate_task(model, tokenizer, spec: TaskSpec, data: list[dict], batch_size: int = 16,
                  device=None, prompts: str = "full", max_seq_len: int | None = None,
                  max_batch_tokens: int | None = 16384, chunk: int = 512, progress: bool = True) -> dict:
    """Accuracy of `model` on one task's (already shuffled and cut) rows.

    `batch_size` examples share a forward pass (1 = the reference's one example at a time). `prompts` is "full"
    (the reference's) or "crop" (to `max_seq_len`, default the model's context). Under torch.distributed each
    rank scores every world_size-th example and the counts are all-reduced. Returns {"accuracy", "centered",
    "n", "cropped", "seconds"}; raises TaskError when a row does not fit the task type or the task has too few
    rows for its few-shot count (on every rank).
    """
    import torch.distributed as dist
    from tqdm.auto import tqdm

    _check_mode(prompts)
    t0 = time.time()
    device = torch.device(device) if device is not None else _model_device(model)
    too_few = check_fewshot(spec, len(data))
    if too_few is not None:
        raise TaskError(too_few)
    for i, row in enumerate(data):  # few-shot examples can be any row: all must be valid
        problem = row_problem(spec.task_type, row)
        if problem is not None:
            raise TaskError(f"task {spec.label}: row {i} (after shuffling) {problem}")
    distributed = dist.is_available() and dist.is_initialized()
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    mine = list(range(rank, len(data), world))
    correct, cropped, error = 0, 0, None
    was_training = getattr(model, "training", False)
    if hasattr(model, "eval"):
        model.eval()
    bar = tqdm(total=len(mine), desc=spec.label, unit="ex", disable=not progress or rank != 0, leave=False)
    try:
        results, cropped = example_results(model, tokenizer, spec, data, mine, prompts, max_seq_len, batch_size,
                                           device, max_batch_tokens, chunk, on_done=bar.update)
        correct = sum(results)
    except TaskError as e:
        if not distributed:
            raise
        error = str(e)  # still take part in the all-reduce below, so that no rank waits forever
    finally:
        bar.close()
        if was_training and hasattr(model, "train"):
            model.train()
    counts = torch.tensor([correct, len(mine), cropped, error is not None], dtype=torch.float64, device=device)
    if distributed and world > 1:
        dist.all_reduce(counts, op=dist.ReduceOp.SUM)
    n_correct, n, n_cropped, failed = counts.tolist()
    if failed:
        raise TaskError(error or f"task {spec.label}: failed on another rank")
    if n_cropped and prompts == "full" and rank == 0:
        print(f"warning: CORE task {spec.label}: {int(n_cropped)} of {int(n)} prompts are longer than the model "
              f"can run ({_position_limit(model)} positions) and kept only their last tokens; the reference "
              f"cannot score these", file=sys.stderr, flush=True)
    accuracy = n_correct / n if n else float("nan")
    return {"accuracy": accuracy, "centered": centered(accuracy, spec.random_baseline), "n": int(n),
            "cropped": int(n_cropped), "seconds": time.time() - t0}


def evaluate_core(model, tokenizer, bundle_dir: str | os.PathLike | None = None, max_per_task: int | None = None,
                  batch_size: int = 16, device=None, url: str = EVAL_BUNDLE_URL, tasks: Sequence[str] | None = None,
                  prompts: str = "full", progress: bool = True, **kwargs) -> dict:
    """CORE of `model`: {"core", "prompts", "tasks": {label: {"accuracy", "centered", "n", "cropped", ...}},
    "failed": [labels]}.

    All task files are read before any scoring, so a corrupt file, or a task with too few rows for its few-shot
    count (`max_per_task` too small), stops the run at once (NanochatError). A task whose rows do not match its
    schema is reported with "error" and left out of the mean; the rest complete. `tasks` restricts the
    evaluation to those labels. Extra keyword arguments go to `evaluate_task`.
    """
    _check_mode(prompts)
    specs = load_bundle(bundle_dir, url=url, progress=progress)
    if tasks is not None:
        unknown = sorted(set(tasks) - {s.label for s in specs})
        if unknown:
            raise NanochatError(f"unknown CORE task(s): {', '.join(unknown)}")
        specs = [s for s in specs if s.label in set(tasks)]
    data = {s.label: load_task_data(s, max_per_task) for s in specs}
    too_few = [msg for s in specs if (msg := check_fewshot(s, len(data[s.label]))) is not None]
    if too_few:
        hint = ""
        if max_per_task is not None and max_per_task > 0:
            hint = f" (max_per_task={max_per_task}: use at least {max(s.num_fewshot for s in specs) + 1})"
        raise NanochatError("; ".join(too_few) + hint)
    results: dict[str, dict] = {}
    for spec in specs:
        try:
            results[spec.label] = evaluate_task(model, tokenizer, spec, data[spec.label], batch_size=batch_size,
                                                device=device, prompts=prompts, progress=progress, **kwargs)
        except TaskError as e:
            results[spec.label] = {"accuracy": None, "centered": None, "n": 0, "error": str(e)}
    done = [r["centered"] for r in results.values() if r["centered"] is not None and math.isfinite(r["centered"])]
    return {"core": sum(done) / len(done) if done else None, "prompts": prompts, "tasks": results,
            "failed": [label for label, r in results.items() if r["centered"] is None]}
