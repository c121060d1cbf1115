"""Rows of a public data set, from the Hugging Face Hub or from a local copy, checked against the columns we use.

``load_rows(hub_path, config, split, local_path=..., columns=...)`` returns a ``datasets.Dataset`` shuffled with
seed 42 (as the reference does, so example i is the same problem everywhere). With ``local_path`` nothing is
downloaded; it may be
- a file: ``.parquet``, ``.jsonl``/``.json`` (optionally ``.gz``/``.bz2``/``.xz``/``.zst``), ``.csv``;
- a ``datasets.save_to_disk`` folder (a Dataset, or a DatasetDict from which ``split`` is taken);
- a folder of such files: the ones whose name (or a parent folder) starts with the split name, e.g.
  ``train.jsonl``, ``test-00000-of-00001.parquet``; all of them if none does. When the folder has a
  sub-folder named after the config (a copy of the Hub repository, e.g. ``main/`` of GSM8K), that is used.
A missing file or a missing column is one NanochatError naming the path and the column.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from nanochat.common import NanochatError

SHUFFLE_SEED = 42
_BUILDERS = {".parquet": "parquet", ".jsonl": "json", ".json": "json", ".csv": "csv"}
_COMPRESSION = (".gz", ".bz2", ".xz", ".zst")


def _builder_for(path: Path) -> str | None:
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in _COMPRESSION:
        suffixes = suffixes[:-1]
    return _BUILDERS.get(suffixes[-1]) if suffixes else None


def _data_files(folder: Path, split: str) -> tuple[str, list[str]]:
    files = sorted(p for p in folder.rglob("*") if p.is_file() and _builder_for(p) and not p.name.startswith("."))
    if not files:
        raise NanochatError(f"{folder}: no .parquet/.jsonl/.json/.csv files and not a save_to_disk folder")
    chosen = [p for p in files if any(part.startswith(split) for part in p.relative_to(folder).parts)]
    chosen = chosen or files
    builders = {_builder_for(p) for p in chosen}
    if len(builders) > 1:
        raise NanochatError(f"{folder}: mixes file formats ({', '.join(sorted(builders))}); keep one format per folder")
    return builders.pop(), [str(p) for p in chosen]


def _load_local(path: Path, split: str, config: str | None = None):
    import datasets

    if config and path.is_dir() and (path / config).is_dir():  # a copy of the whole Hub repo: take the config's folder
        path = path / config
    if not path.exists():
        raise NanochatError(f"local data {path} does not exist")
    if path.is_dir() and ((path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists()):
        try:
            ds = datasets.load_from_disk(str(path))
        except Exception as e:  # corrupt folder
            raise NanochatError(f"{path}: cannot load the save_to_disk folder: {e}") from None
        if isinstance(ds, datasets.DatasetDict):
            if split not in ds:
                raise NanochatError(f"{path}: no split {split!r} (has: {', '.join(ds)})")
            ds = ds[split]
        return ds
    if path.is_dir():
        builder, files = _data_files(path, split)
    else:
        builder = _builder_for(path)
        if builder is None:
            raise NanochatError(f"{path}: unsupported file type; use .parquet, .jsonl, .json(.gz) or .csv")
        files = [str(path)]
    try:
        return datasets.load_dataset(builder, data_files=files, split="train")
    except Exception as e:  # malformed file
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise NanochatError(f"{path}: cannot read it as {builder}: {msg}") from None


def _load_hub(hub_path: str, config: str | None, split: str):
    import datasets

    try:
        return datasets.load_dataset(hub_path, config, split=split)
    except Exception as e:  # no network, unknown config/split, ...
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        what = f"{hub_path}" + (f" ({config})" if config else "") + f" split {split!r}"
        raise NanochatError(
            f"cannot load {what} from the Hugging Face Hub: {msg}; "
            "give the task a local_path (parquet/jsonl file or folder, or a save_to_disk folder) to use a local copy"
        ) from None


def check_columns(ds, columns: Sequence[str], source: str) -> None:
    """One clear error when a column we read is missing."""
    missing = [c for c in columns if c not in ds.column_names]
    if missing:
        raise NanochatError(
            f"{source}: missing column{'s' if len(missing) > 1 else ''} {', '.join(repr(c) for c in missing)} "
            f"(has: {', '.join(ds.column_names) or 'none'})"
        )


def load_rows(hub_path: str, config: str | None, split: str, *, local_path=None, columns: Sequence[str] = (),
              shuffle: bool = True):
    """The data set's rows (a datasets.Dataset), from local_path when given, else from the Hub."""
    if local_path is not None:
        path = Path(local_path).expanduser()
        ds = _load_local(path, split, config)
        source = str(path)
    else:
        ds = _load_hub(hub_path, config, split)
        source = hub_path
    check_columns(ds, columns, source)
    if shuffle:
        ds = ds.shuffle(seed=SHUFFLE_SEED, keep_in_memory=True)
    return ds
