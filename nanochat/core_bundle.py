"""The CORE eval bundle (DCLM, arXiv 2406.11794): fetching it once, and reading its task list and task rows.

The bundle is a folder with ``core.yaml`` (``icl_tasks``: label, icl_task_type, dataset_uri, num_fewshot,
continuation_delimiter), ``eval_meta_data.csv`` (``Eval Task``, ``Random baseline`` in percent) and
``eval_data/<dataset_uri>`` jsonl files. The one idea: the folder either has its ``core.yaml`` or is fetched whole
- the zip comes through the shared verified, resumable downloader (`nanochat.download`), counts only once every
member passes its CRC check, and is extracted beside the folder and renamed into place, so no reader ever sees
half a bundle. Scoring the tasks is `nanochat.core_eval`.
"""
from __future__ import annotations

import csv
import json
import os
import random
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nanochat.common import NanochatError, get_base_dir
from nanochat.download import download_file

EVAL_BUNDLE_URL = "https://karpathy-public.s3.us-west-2.amazonaws.com/eval_bundle.zip"
TASK_TYPES = ("multiple_choice", "schema", "language_modeling")
DATA_SHUFFLE_SEED = 1337


@dataclass(frozen=True)
class TaskSpec:
    label: str
    task_type: str
    num_fewshot: int
    continuation_delimiter: str
    data_path: Path
    random_baseline: float  # percent, as in eval_meta_data.csv


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


def verify_bundle_zip(path: Path) -> str | None:
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


def ensure_bundle(directory: str | os.PathLike | None = None, url: str = EVAL_BUNDLE_URL, retries: int = 5,
                  backoff: float = 2.0, timeout: float = 60.0, progress: bool = True) -> Path:
    """The bundle folder, downloaded and extracted first when it has no core.yaml yet.

    Safe to call from several processes at once (a file lock; the folder appears in one rename).
    """
    from filelock import FileLock
    from tqdm.auto import tqdm

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
        bar = tqdm(unit="B", unit_scale=True, desc=f"downloading {zip_path.name}", disable=not progress)
        try:
            download_file(url, zip_path, verify_bundle_zip, retries=retries, backoff=backoff, timeout=timeout,
                          on_bytes=bar.update)
        finally:
            bar.close()
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
