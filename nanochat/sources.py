"""Pretraining document sources: what a split is made of, and the local and sample sources.

Every source exposes the same structure: per split (``train``, ``val``), an ordered list of *shards*, each an
ordered list of *row groups*, each an ordered list of documents. Parquet row groups are the native ones; jsonl
files and txt folders are cut into groups of 1024 documents. The one idea: a position in a source is always
(shard index, row group index, document offset), which is what the data loader's cursor records, and a source's
fingerprint (file names, sizes, row-group layout) tells whether a saved cursor belongs to it.

* ``local_source`` - any folder (or single file) of parquet (``text`` column), jsonl (``text`` field) or ``.txt``
  files (one document per file).
* ``sample_source`` - the offline corpus built from the Python standard library (`nanochat.sample_corpus`).
* ``parquet_folder_source`` - explicit lists of parquet files (the hub shard sets FineWeb-EDU and ClimbMix are:
  `nanochat.hub_shards`).

Pick a source by name with `nanochat.dataset.get_source`.
"""
from __future__ import annotations

import hashlib
import json
import os
from array import array
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

from nanochat.common import NanochatError

SPLITS = ("train", "val")
GROUP_DOCS = 1024  # documents per "row group" for jsonl/txt sources

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
               doc_cap: int | None = 10_000, shards_read: set[int] | None = None) -> Iterator[str]:
    """Documents of a split in order, each capped at doc_cap chars, stopping once max_chars have been yielded.

    `shards_read`, when given, collects the indices of the shards the documents came from.
    """
    total = 0
    for si, _, docs in source.iter_row_groups(split):
        if shards_read is not None:
            shards_read.add(si)
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
