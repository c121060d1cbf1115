"""CORE (DCLM, arXiv 2406.11794): in-context-learning accuracy of a base model, scored as the reference does.

The eval bundle is a folder with ``core.yaml`` (``icl_tasks``: label, icl_task_type, dataset_uri, num_fewshot,
continuation_delimiter), ``eval_meta_data.csv`` (``Eval Task``, ``Random baseline`` in percent) and
``eval_data/<dataset_uri>`` jsonl files. It is downloaded once (resumable, verified, extracted atomically) when
absent. Per task the rows are shuffled with ``random.Random(1337)`` (then cut to `max_per_task`), and example i gets
``random.Random(1234 + i).sample`` few-shot examples from the other rows. Every prompt starts with <|bos|>:

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

import csv
import json
import math
import os
import random
import shutil
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from nanochat.common import NanochatError, get_base_dir

EVAL_BUNDLE_URL = "https://karpathy-public.s3.us-west-2.amazonaws.com/eval_bundle.zip"
TASK_TYPES = ("multiple_choice", "schema", "language_modeling")
DATA_SHUFFLE_SEED = 1337
FEWSHOT_SEED = 1234


class TaskError(NanochatError):
    """One task cannot be scored (a row that does not match its type's schema); the other tasks can."""


@dataclass(frozen=True)
class TaskSpec:
    label: str
    task_type: str
    num_fewshot: int
    continuation_delimiter: str
    data_path: Path
    random_baseline: float  # percent, as in eval_meta_data.csv


# -----------------------------------------------------------------------------------------------------------------
# The bundle: download, extraction, reading


def default_bundle_dir() -> Path:
    return get_base_dir() / "eval_bundle"


def _bundle_root_in_zip(zf: zipfile.ZipFile) -> str:
    """The folder prefix inside the zip that holds core.yaml ('' or e.g. 'eval_bundle/')."""
    names = zf.namelist()
    candidates = sorted((n for n in names if n == "core.yaml" or n.endswith("/core.yaml")), key=len)
    if not candidates:
        raise ValueError("no core.yaml inside")
    root = candidates[0][: -len("core.yaml")]
    if root + "eval_meta_data.csv" not in names:
        raise ValueError("no eval_meta_data.csv beside core.yaml")
    return root


def _verify_zip(path: Path) -> str | None:
    """None when `path` is a complete zip with intact members (CRC-checked) and the bundle files."""
    try:
        with zipfile.ZipFile(path) as zf:
            bad = zf.testzip()
            if bad is not None:
                return f"member {bad} fails its CRC check"
            _bundle_root_in_zip(zf)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
        return f"not a usable eval bundle zip ({e})"
    return None


def _download_zip(url: str, dest: Path, retries: int, backoff: float, timeout: float, progress: bool) -> None:
    # the shard downloader's single-attempt fetch: HTTP Range resume into a .partial file
    from tqdm.auto import tqdm

    from nanochat.dataset import _fetch_once, _Permanent, _Transient

    partial = dest.with_name(dest.name + ".partial")
    last = "no attempt made"
    bar = tqdm(unit="B", unit_scale=True, desc=f"downloading {dest.name}", disable=not progress)
    try:
        for attempt in range(retries + 1):
            if attempt:
                time.sleep(backoff * 2 ** (attempt - 1))
            try:
                total = _fetch_once(url, partial, timeout, 1 << 20, bar.update, "nanochat")
                size = partial.stat().st_size
                problem = (f"size {size} bytes, expected {total}" if total is not None and size != total
                           else _verify_zip(partial))
                if problem is not None:
                    partial.unlink(missing_ok=True)  # complete but unusable: resuming cannot fix it
                    raise _Transient(problem)
                os.replace(partial, dest)
                return
            except _Permanent as e:
                partial.unlink(missing_ok=True)
                raise NanochatError(f"eval bundle download failed: {e}") from None
            except _Transient as e:
                last = str(e)
    finally:
        bar.close()
    raise NanochatError(f"eval bundle download failed after {retries + 1} attempts: {last} ({url})")


def ensure_bundle(directory: str | os.PathLike | None = None, url: str = EVAL_BUNDLE_URL, retries: int = 5,
                  backoff: float = 2.0, timeout: float = 60.0, progress: bool = True) -> Path:
    """The bundle folder, downloaded and extracted first when it has no core.yaml yet.

    Safe to call from several processes at once (a file lock; the folder appears in one rename).
    """
    from filelock import FileLock

    folder = Path(directory).expanduser() if directory else default_bundle_dir()
    if (folder / "core.yaml").is_file():
        return folder
    if folder.exists() and any(folder.iterdir()):
        raise NanochatError(f"{folder} has no core.yaml: point at an eval bundle folder, or remove it to download "
                            f"the bundle there")
    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder) + ".lock"):
        if (folder / "core.yaml").is_file():
            return folder  # another process finished it meanwhile
        zip_path = folder.with_name(folder.name + ".zip")
        if not zip_path.exists() or _verify_zip(zip_path) is not None:
            _download_zip(url, zip_path, retries, backoff, timeout, progress)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
        try:
            with zipfile.ZipFile(zip_path) as zf:
                root = _bundle_root_in_zip(zf)
                zf.extractall(tmp)  # zipfile drops absolute paths and '..' components
            if folder.exists():
                folder.rmdir()  # empty (checked above)
            os.replace(tmp / root if root else tmp, folder)
        except (zipfile.BadZipFile, OSError, ValueError) as e:
            raise NanochatError(f"cannot extract {zip_path}: {e}") from e
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        zip_path.unlink(missing_ok=True)
    return folder


def _read_yaml(path: Path) -> Any:
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            return yaml.safe_load(f)
    except OSError as e:
        raise NanochatError(f"cannot read {path}: {e}") from e
    except yaml.YAMLError as e:
        raise NanochatError(f"{path} is not valid YAML: {e}") from e


def load_bundle(path_or_none: str | os.PathLike | None = None, url: str = EVAL_BUNDLE_URL,
                progress: bool = True) -> list[TaskSpec]:
    """Task specs of a bundle folder (default: the cached bundle, downloaded from `url` when absent)."""
    folder = ensure_bundle(path_or_none, url=url, progress=progress)
    config = _read_yaml(folder / "core.yaml")
    tasks = config.get("icl_tasks") if isinstance(config, dict) else None
    if not isinstance(tasks, list) or not tasks:
        raise NanochatError(f"{folder / 'core.yaml'} has no 'icl_tasks' list")
    meta = folder / "eval_meta_data.csv"
    baselines: dict[str, float] = {}
    try:
        with open(meta, encoding="utf-8", newline="") as f:
            for row in csv.DictReader(f):
                baselines[row["Eval Task"]] = float(row["Random baseline"])
    except OSError as e:
        raise NanochatError(f"cannot read {meta}: {e}") from e
    except (KeyError, ValueError, TypeError, csv.Error) as e:
        raise NanochatError(f"{meta} needs columns 'Eval Task' and a numeric 'Random baseline' ({e!r})") from e
    specs, missing = [], []
    for i, task in enumerate(tasks):
        try:
            label, task_type, uri = task["label"], task["icl_task_type"], task["dataset_uri"]
            shots = task.get("num_fewshot", 0)
            shots = int(shots[0] if isinstance(shots, list) else shots)
            delimiter = str(task.get("continuation_delimiter", " "))
        except (KeyError, TypeError, ValueError, IndexError) as e:
            raise NanochatError(f"core.yaml task #{i} needs label, icl_task_type, dataset_uri and num_fewshot "
                                f"({e!r})") from e
        if task_type not in TASK_TYPES:
            raise NanochatError(f"core.yaml task {label!r}: unknown icl_task_type {task_type!r} "
                                f"(known: {', '.join(TASK_TYPES)})")
        if label not in baselines:
            raise NanochatError(f"{meta} has no random baseline for task {label!r}")
        path = folder / "eval_data" / uri
        if not path.is_file():
            missing.append(str(path))
        specs.append(TaskSpec(label, task_type, max(0, shots), delimiter, path, baselines[label]))
    if missing:
        raise NanochatError(f"eval bundle {folder} is missing task data: {', '.join(missing)}")
    return specs


def load_task_data(spec: TaskSpec, max_per_task: int | None = None) -> list[dict]:
    """The task's rows, shuffled with seed 1337 and cut to `max_per_task` (None or <= 0: all)."""
    rows = []
    try:
        with open(spec.data_path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if line.strip():
                    rows.append(json.loads(line))
    except OSError as e:
        raise NanochatError(f"cannot read {spec.data_path}: {e}") from e
    except (ValueError, UnicodeDecodeError) as e:
        raise NanochatError(f"{spec.data_path} line {lineno} is not valid JSON: {e}") from e
    random.Random(DATA_SHUFFLE_SEED).shuffle(rows)
    if max_per_task is not None and max_per_task > 0:
        rows = rows[:max_per_task]
    return rows


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
