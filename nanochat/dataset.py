"""Pretraining document sources and the resumable, verified FineWeb-EDU shard download.

Sources (``get_source(name, **cfg)``):

* ``fineweb_edu`` - Karpathy's shuffled repack of FineWeb-EDU: ``shard_00000.parquet`` ... ``shard_01822.parquet``
  (the last one is the validation shard), column ``text``, row groups of 1024 documents.
* ``local`` - any folder (or single file) of parquet (``text`` column), jsonl (``text`` field) or ``.txt`` files
  (one document per file).
* ``sample`` - the offline corpus built from the Python standard library (`nanochat.sample_corpus`).

Every source exposes the same structure: per split, an ordered list of *shards*, each an ordered list of *row
groups*, each an ordered list of documents. Parquet row groups are the native ones; jsonl files and txt folders
are cut into groups of 1024 documents. A position in a source is therefore always
(shard index, row group index, document offset), which is what the data loader's cursor records.

Command line::

    python -m nanochat.dataset download n=8 [base_url=URL] [dir=PATH] [workers=4] [retries=5]
    python -m nanochat.dataset info [dir=PATH]
    python -m nanochat.dataset sample          # build the offline sample corpus and print where it is
"""
from __future__ import annotations

import hashlib
import http.client
import json
import math
import os
import random
import re
import socket
import sys
import time
import urllib.error
import urllib.request
from array import array
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from nanochat.common import NanochatError, get_base_dir

SPLITS = ("train", "val")
GROUP_DOCS = 1024  # documents per "row group" for jsonl/txt sources

FINEWEB_BASE_URL = "https://huggingface.co/datasets/karpathy/fineweb-edu-100b-shuffle/resolve/main"
FINEWEB_TOTAL_SHARDS = 1823  # shard_00000 ... shard_01822; the last is the validation shard
FINEWEB_CHARS_PER_SHARD = 250e6
FINEWEB_BYTES_PER_SHARD = 100e6


def shard_name(index: int) -> str:
    return f"shard_{index:05d}.parquet"


def fineweb_dir(directory: str | os.PathLike | None = None) -> Path:
    return Path(directory) if directory else get_base_dir() / "base_data"


# ----------------------------------------------------------------------------------------------------------------
# Shards and sources


@dataclass
class Shard:
    """One unit of a split: a parquet file, a jsonl file (or a document range of it), or a chunk of txt files."""

    kind: str                     # "parquet" | "jsonl" | "txt"
    paths: tuple[Path, ...]       # one path, except for txt chunks
    groups: list[tuple]           # per row group: parquet (rg, lo, hi); jsonl (byte offset, count); txt (lo, hi)
    label: str = ""               # stable name used in fingerprints

    @property
    def path(self) -> Path:
        return self.paths[0]

    def num_row_groups(self) -> int:
        return len(self.groups)

    def group_sizes(self) -> list[int]:
        if self.kind == "parquet":
            return [hi - lo for _, lo, hi in self.groups]
        if self.kind == "jsonl":
            return [count for _, count in self.groups]
        return [hi - lo for lo, hi in self.groups]

    def read_group(self, index: int) -> list[str]:
        try:
            return self._read_group(index)
        except NanochatError:
            raise
        except Exception as e:  # noqa: BLE001 - turn any I/O or format problem into one clear line
            raise NanochatError(f"cannot read row group {index} of {self.path}: {type(e).__name__}: {e}") from e

    def _read_group(self, index: int) -> list[str]:
        spec = self.groups[index]
        if self.kind == "parquet":
            import pyarrow.parquet as pq

            rg, lo, hi = spec
            with pq.ParquetFile(self.path) as pf:
                column = pf.read_row_group(rg, columns=["text"]).column("text")
            texts = column.to_pylist() if (lo, hi) == (0, len(column)) else column.slice(lo, hi - lo).to_pylist()
            return [t if t is not None else "" for t in texts]
        if self.kind == "jsonl":
            offset, count = spec
            out = []
            with open(self.path, "rb") as f:
                f.seek(offset)
                while len(out) < count:
                    line = f.readline()
                    if not line:
                        raise NanochatError(f"{self.path}: file shorter than when it was indexed")
                    if not line.strip():
                        continue
                    out.append(_jsonl_text(line, self.path))
            return out
        lo, hi = spec
        return [p.read_text(encoding="utf-8", errors="replace") for p in self.paths[lo:hi]]

    def iter_groups(self) -> Iterator[tuple[int, list[str]]]:
        for i in range(len(self.groups)):
            yield i, self.read_group(i)


def _jsonl_text(line: bytes, path: Path) -> str:
    try:
        obj = json.loads(line)
    except ValueError as e:
        raise NanochatError(f"{path}: invalid JSON line ({e})") from e
    if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
        raise NanochatError(f"{path}: every jsonl line needs a string field 'text'")
    return obj["text"]


def _parquet_shard(path: Path, lo_doc: int = 0, hi_doc: int | None = None, label: str | None = None) -> Shard:
    """Shard for a parquet file, optionally restricted to documents [lo_doc, hi_doc)."""
    import pyarrow.parquet as pq

    try:
        with pq.ParquetFile(path) as pf:
            names = pf.schema_arrow.names
            sizes = [pf.metadata.row_group(i).num_rows for i in range(pf.metadata.num_row_groups)]
    except Exception as e:  # noqa: BLE001
        raise NanochatError(f"cannot read parquet file {path}: {type(e).__name__}: {e}") from e
    if "text" not in names:
        raise NanochatError(f"{path} has no 'text' column (columns: {', '.join(names) or 'none'})")
    total = sum(sizes)
    hi_doc = total if hi_doc is None else hi_doc
    groups, start = [], 0
    for rg, n in enumerate(sizes):
        lo, hi = max(lo_doc, start) - start, min(hi_doc, start + n) - start
        if hi > lo:
            groups.append((rg, lo, hi))
        start += n
    return Shard("parquet", (path,), groups, label or path.name)


def _jsonl_offsets(path: Path) -> array:
    offsets = array("q")
    try:
        with open(path, "rb") as f:
            pos = 0
            first = True
            for line in f:
                if line.strip():
                    if first:
                        _jsonl_text(line, path)  # fail early on a file without a 'text' field
                        first = False
                    offsets.append(pos)
                pos += len(line)
    except OSError as e:
        raise NanochatError(f"cannot read {path}: {e}") from e
    return offsets


def _jsonl_shard(path: Path, offsets: array, lo_doc: int, hi_doc: int, label: str) -> Shard:
    groups = [(offsets[i], min(GROUP_DOCS, hi_doc - i)) for i in range(lo_doc, hi_doc, GROUP_DOCS)]
    return Shard("jsonl", (path,), groups, label)


def _txt_shards(paths: Sequence[Path], labels: Sequence[str]) -> list[Shard]:
    shards = []
    for i in range(0, len(paths), GROUP_DOCS):
        chunk = tuple(paths[i: i + GROUP_DOCS])
        label = "txt:" + hashlib.sha1("\n".join(labels[i: i + GROUP_DOCS]).encode()).hexdigest()[:12]
        shards.append(Shard("txt", chunk, [(0, len(chunk))], label))
    return shards


class Source:
    """A named dataset with ``train`` and ``val`` splits of shards (see module docstring)."""

    def __init__(self, name: str, splits: dict[str, list[Shard]], description: str = ""):
        self.name = name
        self._splits = splits
        self.description = description
        self._fingerprint: str | None = None

    def shards(self, split: str) -> list[Shard]:
        if split not in SPLITS:
            raise NanochatError(f"unknown split {split!r} (use 'train' or 'val')")
        shards = self._splits.get(split) or []
        if not shards:
            raise NanochatError(f"data source '{self.name}' has no {split} data")
        return shards

    def has_split(self, split: str) -> bool:
        return bool(self._splits.get(split))

    def files(self, split: str) -> list[Path]:
        out: list[Path] = []
        for shard in self.shards(split):
            for p in shard.paths:
                if not out or out[-1] != p:
                    out.append(p)
        return out

    @property
    def fingerprint(self) -> str:
        """Identifies the dataset by file names, sizes and row-group layout (foreign cursors are rejected)."""
        if self._fingerprint is None:
            def size(p: Path) -> int:
                try:
                    return p.stat().st_size
                except OSError:
                    return -1

            desc = {
                split: [[s.kind, s.label, s.group_sizes(), [size(p) for p in s.paths]]
                        for s in self._splits.get(split) or []]
                for split in SPLITS
            }
            digest = hashlib.sha1(json.dumps(desc, sort_keys=True).encode()).hexdigest()[:16]
            self._fingerprint = f"{self.name}:{digest}"
        return self._fingerprint

    def row_groups(self, split: str) -> list[tuple[int, int, int]]:
        """Flat list of (shard index, row group index, number of documents) of a split, in order."""
        out = []
        for si, shard in enumerate(self.shards(split)):
            for gi, n in enumerate(shard.group_sizes()):
                out.append((si, gi, n))
        return out

    def read_row_group(self, split: str, shard_index: int, group_index: int) -> list[str]:
        return self.shards(split)[shard_index].read_group(group_index)

    def iter_row_groups(self, split: str = "train", start: tuple[int, int] = (0, 0)
                        ) -> Iterator[tuple[int, int, list[str]]]:
        """Yield (shard index, row group index, documents) from `start` to the end of the split."""
        for si, shard in enumerate(self.shards(split)):
            if si < start[0]:
                continue
            for gi in range(shard.num_row_groups()):
                if si == start[0] and gi < start[1]:
                    continue
                yield si, gi, shard.read_group(gi)

    def num_documents(self, split: str) -> int:
        return sum(n for _, _, n in self.row_groups(split))

    def __repr__(self) -> str:
        counts = {s: len(self._splits.get(s) or []) for s in SPLITS}
        return f"Source({self.name!r}, shards={counts}, fingerprint={self.fingerprint!r})"


def iter_texts(source: Source, split: str = "train", max_chars: int | None = None,
               doc_cap: int | None = 10_000) -> Iterator[str]:
    """Documents of a split in order, each capped at doc_cap chars, stopping once max_chars have been yielded."""
    total = 0
    for _, _, docs in source.iter_row_groups(split):
        for doc in docs:
            if doc_cap is not None and len(doc) > doc_cap:
                doc = doc[:doc_cap]
            if max_chars is not None and total + len(doc) > max_chars:
                rest = max_chars - total
                if rest > 0:
                    yield doc[:rest]
                return
            total += len(doc)
            yield doc
            if max_chars is not None and total >= max_chars:
                return


# ----------------------------------------------------------------------------------------------------------------
# Concrete sources


def parquet_folder_source(name: str, train: Sequence[Path], val: Sequence[Path], description: str = "") -> Source:
    return Source(name, {"train": [_parquet_shard(p) for p in train], "val": [_parquet_shard(p) for p in val]},
                  description)


def sample_source(directory: str | os.PathLike | None = None) -> Source:
    from nanochat.sample_corpus import ensure_sample_corpus, read_manifest

    folder = ensure_sample_corpus(Path(directory) if directory else None)
    manifest = read_manifest(folder)
    files = [folder / n for n in manifest["files"]]
    return parquet_folder_source("sample", files[:-1], files[-1:], f"offline sample corpus in {folder}")


def local_source(path: str | os.PathLike, val_fraction: float = 0.05, val_file: str | None = None,
                 name: str = "local") -> Source:
    """Any folder (searched recursively) or single file of .parquet / .jsonl / .txt documents.

    Files are sorted by relative path. The validation split is `val_file` (a name or path relative to the folder)
    when given; otherwise the last `val_fraction` of the files (at least one, leaving at least one for training),
    or of the documents when there is a single parquet/jsonl file (or txt files: one document each).
    `val_fraction=0` means no validation split.
    """
    root = Path(path).expanduser()
    if not root.exists():
        raise NanochatError(f"local data path does not exist: {root}")
    if not 0 <= val_fraction < 1:
        raise NanochatError(f"val_fraction must be in [0, 1), got {val_fraction}")
    exts = {".parquet": "parquet", ".jsonl": "jsonl", ".txt": "txt"}
    if root.is_file():
        base, files = root.parent, [root]
    else:
        base = root
        try:
            files = [p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in exts
                     and not any(part.startswith(".") for part in p.relative_to(root).parts)]
        except OSError as e:
            raise NanochatError(f"cannot list {root}: {e}") from e
    files = sorted(files, key=lambda p: p.relative_to(base).as_posix())
    if not files:
        raise NanochatError(f"no .parquet, .jsonl or .txt files in {root}")
    kinds = {exts.get(p.suffix.lower()) for p in files}
    if None in kinds:
        raise NanochatError(f"unsupported file type: {root} (use .parquet, .jsonl or .txt)")
    if len(kinds) > 1:
        raise NanochatError(f"{root} mixes file types ({', '.join(sorted(kinds))}); use one kind per folder")
    kind = kinds.pop()
    rel = [p.relative_to(base).as_posix() for p in files]

    val_idx: set[int] = set()
    if val_file is not None:
        want = Path(val_file)
        matches = [i for i, (p, r) in enumerate(zip(files, rel))
                   if r == want.as_posix() or p == want or p.name == want.name and want.parent == Path(".")]
        if len(matches) != 1:
            raise NanochatError(f"validation file {val_file!r} not found (or ambiguous) in {root}")
        val_idx = set(matches)
        if len(files) == 1:
            raise NanochatError("the validation file cannot be the only data file")

    splits: dict[str, list[Shard]] = {"train": [], "val": []}
    if kind == "txt":
        if val_file is None and val_fraction > 0:
            if len(files) < 2:
                raise NanochatError(f"{root}: need at least 2 .txt files (documents) to hold out a validation split")
            n_val = min(len(files) - 1, max(1, round(len(files) * val_fraction)))
            val_idx = set(range(len(files) - n_val, len(files)))
        tr = [i for i in range(len(files)) if i not in val_idx]
        va = sorted(val_idx)
        splits["train"] = _txt_shards([files[i] for i in tr], [rel[i] for i in tr])
        splits["val"] = _txt_shards([files[i] for i in va], [rel[i] for i in va])
    elif len(files) == 1 and val_file is None:
        p = files[0]
        if kind == "parquet":
            n = sum(s for s in _parquet_shard(p).group_sizes())
        else:
            offsets = _jsonl_offsets(p)
            n = len(offsets)
        if n == 0:
            raise NanochatError(f"{p} contains no documents")
        n_val = 0
        if val_fraction > 0:
            if n < 2:
                raise NanochatError(f"{p}: a single document cannot be split into train and validation")
            n_val = min(n - 1, max(1, round(n * val_fraction)))
        cut = n - n_val
        if kind == "parquet":
            splits["train"] = [_parquet_shard(p, 0, cut, f"{rel[0]}[0:{cut}]")]
            splits["val"] = [_parquet_shard(p, cut, n, f"{rel[0]}[{cut}:{n}]")] if n_val else []
        else:
            splits["train"] = [_jsonl_shard(p, offsets, 0, cut, f"{rel[0]}[0:{cut}]")]
            splits["val"] = [_jsonl_shard(p, offsets, cut, n, f"{rel[0]}[{cut}:{n}]")] if n_val else []
    else:
        if val_file is None and val_fraction > 0:
            n_val = min(len(files) - 1, max(1, round(len(files) * val_fraction)))
            val_idx = set(range(len(files) - n_val, len(files)))
        for i, p in enumerate(files):
            if kind == "parquet":
                shard = _parquet_shard(p, label=rel[i])
            else:
                offsets = _jsonl_offsets(p)
                shard = _jsonl_shard(p, offsets, 0, len(offsets), rel[i])
            if shard.groups:
                splits["val" if i in val_idx else "train"].append(shard)
    if not splits["train"]:
        raise NanochatError(f"{root}: no training documents")
    if val_idx and not splits["val"]:
        raise NanochatError(f"{root}: the validation file(s) contain no documents")
    return Source(name, splits, f"local data in {root}")


def fineweb_source(dir: str | os.PathLike | None = None, num_shards: int | None = None, download: bool = False,
                   base_url: str = FINEWEB_BASE_URL, workers: int = 4, total_shards: int = FINEWEB_TOTAL_SHARDS,
                   download_workers: int | None = None, **download_kwargs) -> Source:
    """FineWeb-EDU shards in `dir` (default <base dir>/base_data): training shards 0..num_shards-1 (default: all
    present), validation = the last shard of the dataset.

    With download=True the missing shards (and the validation shard) are fetched first (`download_workers` is an
    alias of `workers`).
    """
    if download_workers is not None:
        workers = download_workers
    folder = fineweb_dir(dir)
    val_index = total_shards - 1
    if download:
        if num_shards is None:
            raise NanochatError("fineweb_edu: set num_shards to download")
        download_shards(num_shards, base_url=base_url, directory=folder, workers=workers,
                        total_shards=total_shards, **download_kwargs)
    present = sorted(int(m.group(1)) for p in (folder.glob("shard_*.parquet") if folder.is_dir() else [])
                     if (m := re.fullmatch(r"shard_(\d{5})\.parquet", p.name)))
    train_present = [i for i in present if i != val_index]
    if num_shards is None:
        # all present training shards, contiguous from 0 (a gap means an unfinished download)
        n = 0
        while n < len(train_present) and train_present[n] == n:
            n += 1
        num_shards = n
    num_shards = min(num_shards, total_shards - 1)
    missing = [i for i in range(num_shards) if i not in set(train_present)]
    hint = f"run: python -m nanochat.dataset download n={max(num_shards, 1)}" + (f" dir={folder}" if dir else "")
    if num_shards == 0:
        raise NanochatError(f"no FineWeb-EDU shards in {folder}; {hint}")
    if missing:
        raise NanochatError(f"{len(missing)} of {num_shards} FineWeb-EDU shards missing in {folder} "
                            f"(first: {shard_name(missing[0])}); {hint}")
    if val_index not in present:
        raise NanochatError(f"FineWeb-EDU validation shard {shard_name(val_index)} missing in {folder}; {hint}")
    return parquet_folder_source("fineweb_edu", [folder / shard_name(i) for i in range(num_shards)],
                                 [folder / shard_name(val_index)], f"FineWeb-EDU in {folder}")


_ALIASES = {"fineweb_edu": "fineweb_edu", "fineweb-edu": "fineweb_edu", "fineweb": "fineweb_edu",
            "local": "local", "sample": "sample"}


def get_source(name: str, **cfg: Any) -> Source:
    """Build a source from a config: name in {fineweb_edu, local, sample} plus that source's keyword options.

    fineweb_edu: dir, num_shards, download, base_url, workers (or download_workers), total_shards, retries,
                 backoff, timeout
    local:       path, val_fraction, val_file
    sample:      dir
    Unknown keys are an error; None values are ignored (so a Hydra group can list every key).
    """
    cfg = {k: v for k, v in cfg.items() if v is not None}
    kind = _ALIASES.get(str(name).lower())
    try:
        if kind == "fineweb_edu":
            return fineweb_source(**cfg)
        if kind == "local":
            if "path" not in cfg:
                raise NanochatError("data source 'local' needs path=<folder or file>")
            return local_source(**cfg)
        if kind == "sample":
            return sample_source(**cfg)
    except TypeError as e:
        raise NanochatError(f"bad options for data source {name!r}: {e}") from e
    raise NanochatError(f"unknown data source {name!r} (choose fineweb_edu, local or sample)")


# ----------------------------------------------------------------------------------------------------------------
# Disk / shard needs


def params_for_depth(depth: int, vocab_size: int = 65_536) -> int:
    """Approximate parameter count of the depth-`depth` model (d_model = 64 * depth)."""
    d = 64 * depth
    return 2 * vocab_size * d + 12 * depth * d * d


def shards_needed(tokens: float, chars_per_token: float = 4.8, chars_per_shard: float = FINEWEB_CHARS_PER_SHARD,
                  margin: float = 1.1) -> int:
    """FineWeb-EDU training shards that hold `tokens` tokens (with a safety margin)."""
    return max(1, math.ceil(tokens * chars_per_token * margin / chars_per_shard))


def disk_needs(depth: int, ratio: float = 20.0, vocab_size: int = 65_536, chars_per_token: float = 4.8,
               margin: float = 1.1) -> dict:
    """Parameters, training tokens (ratio x params), shards and gigabytes of FineWeb-EDU for one depth."""
    params = params_for_depth(depth, vocab_size)
    tokens = ratio * params
    shards = shards_needed(tokens, chars_per_token, margin=margin)
    return {"depth": depth, "params": params, "tokens": int(tokens), "shards": shards,
            "gigabytes": round((shards + 1) * FINEWEB_BYTES_PER_SHARD / 1e9, 1)}


def disk_needs_table(depths: Sequence[int] = (4, 8, 12, 16, 20, 26, 32), **kwargs) -> str:
    lines = ["| depth | params | tokens (20x) | shards | disk |", "|---:|---:|---:|---:|---:|"]
    for depth in depths:
        n = disk_needs(depth, **kwargs)
        lines.append(f"| d{depth} | {n['params'] / 1e6:.0f}M | {n['tokens'] / 1e9:.1f}B | {n['shards']} "
                     f"| {n['gigabytes']:.1f} GB |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------------
# Download


class _Permanent(Exception):
    """Retrying cannot help (404, bad schema)."""


class _Transient(Exception):
    """Worth retrying (5xx, dropped connection, truncated or corrupt body)."""


def verify_shard(path: str | os.PathLike, expected_size: int | None = None) -> str | None:
    """None when `path` is a complete, readable shard; otherwise the reason it is not."""
    import pyarrow.parquet as pq

    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError:
        return "missing"
    if expected_size is not None and size != expected_size:
        return f"size {size} bytes, expected {expected_size}"
    try:
        with pq.ParquetFile(path) as pf:
            names = pf.schema_arrow.names
            groups = pf.metadata.num_row_groups
    except Exception as e:  # noqa: BLE001
        return f"unreadable parquet ({type(e).__name__}: {e})"
    if "text" not in names:
        return "no 'text' column"
    if groups < 1:
        return "no row groups"
    return None


def _content_range(value: str | None) -> tuple[int | None, int | None]:
    m = re.match(r"bytes (\d+)-\d+/(\d+|\*)", value or "")
    if not m:
        m2 = re.match(r"bytes \*/(\d+)", value or "")
        return (None, int(m2.group(1))) if m2 else (None, None)
    return int(m.group(1)), (None if m.group(2) == "*" else int(m.group(2)))


def _fetch_once(url: str, partial: Path, timeout: float, chunk: int, on_bytes: Callable[[int], None] | None,
                user_agent: str) -> int | None:
    """One HTTP attempt appending to `partial` (resuming with Range). Returns the expected total size or None."""
    have = partial.stat().st_size if partial.exists() else 0
    headers = {"User-Agent": user_agent}
    if have:
        headers["Range"] = f"bytes={have}-"
    req = urllib.request.Request(url, headers=headers)
    try:
        resp = urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as e:
        e.close()
        if e.code == 416 and have:
            _, total = _content_range(e.headers.get("Content-Range"))
            if total is not None and total == have:
                return total  # already complete
            partial.unlink(missing_ok=True)
            raise _Transient("server rejected the resume range; restarting") from e
        if e.code in (404, 410, 401, 403):
            raise _Permanent(f"HTTP {e.code} {e.reason} for {url}") from e
        raise _Transient(f"HTTP {e.code} {e.reason}") from e
    except (urllib.error.URLError, socket.timeout, ConnectionError, OSError, http.client.HTTPException) as e:
        reason = getattr(e, "reason", e)
        raise _Transient(f"network error: {reason}") from e
    with resp:
        status = resp.status
        length = resp.headers.get("Content-Length")
        length = int(length) if length and length.isdigit() else None
        if status == 206:
            start, total = _content_range(resp.headers.get("Content-Range"))
            if start != have:
                partial.unlink(missing_ok=True)
                raise _Transient(f"server resumed at byte {start}, expected {have}; restarting")
            mode = "ab"
        elif status == 200:
            total, mode = length, "wb"  # fresh transfer, or a server that ignores Range: start over
            have = 0
        else:
            raise _Transient(f"unexpected HTTP status {status}")
        received = 0
        try:
            with open(partial, mode) as f:
                while True:
                    block = resp.read(chunk)
                    if not block:
                        break
                    f.write(block)
                    received += len(block)
                    if on_bytes:
                        on_bytes(len(block))
        except (socket.timeout, ConnectionError, OSError, urllib.error.URLError) as e:
            if isinstance(e, OSError) and e.errno in (28,):  # ENOSPC: not worth retrying
                raise _Permanent(f"cannot write {partial}: {e}") from e
            raise _Transient(f"connection dropped after {have + received} bytes: {e}") from e
        except Exception as e:  # http.client.IncompleteRead and friends
            raise _Transient(f"connection dropped after {have + received} bytes: {type(e).__name__}") from e
        if total is not None and have + received < total:
            raise _Transient(f"truncated transfer: {have + received} of {total} bytes")
        return total


def download_file(url: str, dest: str | os.PathLike, retries: int = 5, backoff: float = 2.0,
                  timeout: float = 60.0, chunk: int = 1 << 20, on_bytes: Callable[[int], None] | None = None,
                  lock_timeout: float = -1, user_agent: str = "nanochat") -> Path:
    """Download one shard to `dest`, verified, resumable, under a per-file lock. Returns dest.

    A `.partial` file collects the bytes (resumed with an HTTP Range request after a dropped connection; a server
    that ignores Range restarts it). The file is renamed into place only after its size matches Content-Length (if
    known) and pyarrow reads its footer with a `text` column and at least one row group. Corrupt bodies are
    deleted and fetched again. 404/403 and a missing `text` column fail at once; other failures retry with
    exponential backoff (`backoff * 2**attempt` seconds) and then raise NanochatError.
    """
    from filelock import FileLock, Timeout

    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(dest.name + ".partial")
    lock = FileLock(str(dest) + ".lock", timeout=lock_timeout)
    try:
        lock.acquire()
    except Timeout as e:
        raise NanochatError(f"{dest.name}: another process holds {dest.name}.lock") from e
    try:
        if dest.exists():
            if verify_shard(dest) is None:
                return dest
            dest.unlink()  # a file that fails verification never counts as present
        last = "no attempt made"
        for attempt in range(retries + 1):
            if attempt:
                time.sleep(backoff * (2 ** (attempt - 1)) * (1 + 0.1 * random.random()))
            try:
                total = _fetch_once(url, partial, timeout, chunk, on_bytes, user_agent)
                problem = verify_shard(partial, total)
                if problem == "no 'text' column":
                    partial.unlink(missing_ok=True)
                    raise _Permanent(f"{url} is not a text shard (no 'text' column)")
                if problem is not None:
                    partial.unlink(missing_ok=True)  # complete but corrupt: resuming cannot fix it
                    raise _Transient(f"downloaded file is corrupt ({problem})")
                with open(partial, "rb") as f:
                    os.fsync(f.fileno())
                os.replace(partial, dest)
                return dest
            except _Permanent as e:
                partial.unlink(missing_ok=True)
                raise NanochatError(f"download of {dest.name} failed: {e}") from None
            except _Transient as e:
                last = str(e)
        # a .partial file may stay behind: it never counts as a shard, and the next attempt resumes it
        raise NanochatError(f"download of {dest.name} failed after {retries + 1} attempts: {last} ({url})")
    finally:
        lock.release()


def download_shards(n: int, base_url: str = FINEWEB_BASE_URL, directory: str | os.PathLike | None = None,
                    workers: int = 4, retries: int = 5, backoff: float = 2.0, timeout: float = 60.0,
                    total_shards: int = FINEWEB_TOTAL_SHARDS, include_val: bool = True, progress: bool = True,
                    indices: Sequence[int] | None = None) -> list[Path]:
    """Make sure FineWeb-EDU shards 0..n-1 (and the validation shard) are present and verified in `directory`.

    Runs up to `workers` downloads at once; already-present verified shards are skipped. Stops at the first
    failure with a NanochatError (shards finished before it stay, unfinished ones are left as `.partial` files
    that the next call resumes, never as shards).
    """
    from tqdm.auto import tqdm

    folder = fineweb_dir(directory)
    if indices is None:
        if n < 0:
            raise NanochatError(f"n must be >= 0, got {n}")
        indices = list(range(min(n, total_shards - 1)))
        if include_val:
            indices.append(total_shards - 1)
    indices = list(dict.fromkeys(int(i) for i in indices))
    for i in indices:
        if not 0 <= i < total_shards:
            raise NanochatError(f"shard index {i} out of range 0..{total_shards - 1}")
    base_url = base_url.rstrip("/")
    todo = [i for i in indices if verify_shard(folder / shard_name(i)) is not None]
    paths = [folder / shard_name(i) for i in indices]
    if not todo:
        return paths
    bar = tqdm(total=len(todo), unit="shard", desc=f"downloading to {folder}", disable=not progress,
               dynamic_ncols=True)
    nbytes = [0]

    def on_bytes(k: int) -> None:
        nbytes[0] += k

    def one(i: int) -> Path:
        path = download_file(f"{base_url}/{shard_name(i)}", folder / shard_name(i), retries=retries,
                             backoff=backoff, timeout=timeout, on_bytes=on_bytes)
        bar.set_postfix_str(f"{nbytes[0] / 1e6:.0f} MB")
        bar.update(1)
        return path

    pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="nanochat-download")
    try:
        futures = [pool.submit(one, i) for i in todo]
        done, pending = wait(futures, return_when=FIRST_EXCEPTION)
        for f in pending:
            f.cancel()
        errors = [f.exception() for f in futures if f.done() and not f.cancelled() and f.exception()]
        if errors:
            pool.shutdown(wait=True, cancel_futures=True)
            err = errors[0]
            if isinstance(err, NanochatError):
                raise err
            raise NanochatError(f"download failed: {type(err).__name__}: {err}") from err
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        bar.close()
    return paths


# ----------------------------------------------------------------------------------------------------------------
# Info / CLI


def info(directory: str | os.PathLike | None = None, total_shards: int = FINEWEB_TOTAL_SHARDS) -> str:
    from nanochat.sample_corpus import read_manifest, sample_dir

    folder = fineweb_dir(directory)
    lines = [f"base dir: {get_base_dir()}"]
    present = sorted(folder.glob("shard_*.parquet")) if folder.is_dir() else []
    partial = sorted(folder.glob("shard_*.parquet.partial")) if folder.is_dir() else []
    val = folder / shard_name(total_shards - 1)
    size = sum(p.stat().st_size for p in present)
    n_train = sum(1 for p in present if p != val)
    lines.append(f"fineweb_edu: {folder}: {n_train} training shards, validation shard "
                 f"{'present' if val.exists() else 'missing'}, {size / 1e9:.2f} GB"
                 + (f", {len(partial)} unfinished (.partial) downloads" if partial else ""))
    manifest = read_manifest()
    if manifest:
        lines.append(f"sample: {sample_dir()}: {len(manifest['files'])} shards, {sum(manifest['documents'])} "
                     f"documents, {manifest['chars'] / 1e6:.1f} M chars")
    else:
        lines.append("sample: not built yet (built automatically on first use)")
    lines.append("shards needed (tokens = 20 x params, 4.8 chars/token, 250M chars/shard, +10% margin):")
    lines.append(disk_needs_table())
    return "\n".join(lines)


def _parse_kv(args: Sequence[str], allowed: dict[str, Callable[[str], Any]]) -> dict[str, Any]:
    out = {}
    for arg in args:
        key, sep, value = arg.partition("=")
        key = key.lstrip("-").replace("-", "_")
        if not sep or key not in allowed:
            raise NanochatError(f"unexpected argument {arg!r}; expected key=value with key in "
                                f"{', '.join(sorted(allowed))}")
        try:
            out[key] = allowed[key](value)
        except ValueError as e:
            raise NanochatError(f"bad value for {key}: {value!r}") from e
    return out


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    usage = ("usage: python -m nanochat.dataset download n=N [base_url=URL] [dir=PATH] [workers=4] [retries=5]\n"
             "       python -m nanochat.dataset info [dir=PATH]\n"
             "       python -m nanochat.dataset sample")
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage)
        return 0
    cmd, rest = argv[0], argv[1:]
    try:
        if cmd == "download":
            kw = _parse_kv(rest, {"n": int, "base_url": str, "dir": str, "workers": int, "retries": int,
                                  "backoff": float, "timeout": float, "total_shards": int})
            if "n" not in kw:
                raise NanochatError("download needs n=<number of training shards>")
            paths = download_shards(kw.pop("n"), directory=kw.pop("dir", None), **kw)
            print(f"{len(paths)} shards ready in {paths[0].parent if paths else fineweb_dir(None)}")
        elif cmd == "info":
            kw = _parse_kv(rest, {"dir": str, "total_shards": int})
            print(info(kw.get("dir"), kw.get("total_shards", FINEWEB_TOTAL_SHARDS)))
        elif cmd == "sample":
            _parse_kv(rest, {})
            src = sample_source()
            print(f"sample corpus: {src.files('train')[0].parent} ({src.num_documents('train')} train / "
                  f"{src.num_documents('val')} val documents)")
        else:
            raise NanochatError(f"unknown command {cmd!r}\n{usage}")
    except NanochatError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
