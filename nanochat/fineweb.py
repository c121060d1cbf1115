"""FineWeb-EDU, the pretraining corpus: its shards on disk, their download, and how many a model needs.

Karpathy's shuffled repack of FineWeb-EDU is ``shard_00000.parquet`` ... ``shard_01822.parquet`` (the last one is
the validation shard), column ``text``, row groups of 1024 documents, about 250M characters (100 MB) each. The one
idea: a shard counts as present only when it verifies (right size, readable parquet footer, a ``text`` column), so
a folder never holds half a shard; downloads go through the shared `nanochat.download.download_file`, which
keeps unfinished bytes in ``.partial`` files that the next call resumes.
"""
from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Sequence

from nanochat.common import NanochatError, get_base_dir
from nanochat.download import Permanent, download_file, download_files
from nanochat.sources import Source, parquet_folder_source

FINEWEB_BASE_URL = "https://huggingface.co/datasets/karpathy/fineweb-edu-100b-shuffle/resolve/main"
FINEWEB_TOTAL_SHARDS = 1823  # shard_00000 ... shard_01822; the last is the validation shard
FINEWEB_CHARS_PER_SHARD = 250e6
FINEWEB_BYTES_PER_SHARD = 100e6
NO_TEXT_COLUMN = "no 'text' column"


def shard_name(index: int) -> str:
    return f"shard_{index:05d}.parquet"


def fineweb_dir(directory: str | os.PathLike | None = None) -> Path:
    return Path(directory) if directory else get_base_dir() / "base_data"


# ----------------------------------------------------------------------------------------------------------------
# The source


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


# ----------------------------------------------------------------------------------------------------------------
# Download


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
        return NO_TEXT_COLUMN
    if groups < 1:
        return "no row groups"
    return None


def _verify_downloaded(path: Path) -> str | None:
    problem = verify_shard(path)
    if problem == NO_TEXT_COLUMN:
        raise Permanent(f"not a text shard ({NO_TEXT_COLUMN})")  # fetching it again gives the same file
    return problem


def download_shard(url: str, dest: str | os.PathLike, **kwargs) -> Path:
    """`nanochat.download.download_file` of one shard, kept only when it verifies as a shard."""
    return download_file(url, dest, _verify_downloaded, **kwargs)


def download_shards(n: int, base_url: str = FINEWEB_BASE_URL, directory: str | os.PathLike | None = None,
                    workers: int = 4, retries: int = 5, backoff: float = 2.0, timeout: float = 60.0,
                    total_shards: int = FINEWEB_TOTAL_SHARDS, include_val: bool = True, progress: bool = True,
                    indices: Sequence[int] | None = None) -> list[Path]:
    """Make sure FineWeb-EDU shards 0..n-1 (and the validation shard) are present and verified in `directory`.

    Runs up to `workers` downloads at once; already-present verified shards are skipped. Stops at the first
    failure with a NanochatError (shards finished before it stay, unfinished ones are left as `.partial` files
    that the next call resumes, never as shards).
    """
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
    download_files([(f"{base_url}/{shard_name(i)}", folder / shard_name(i)) for i in todo], _verify_downloaded,
                   workers=workers, progress=progress, desc=f"downloading to {folder}", unit="shard",
                   retries=retries, backoff=backoff, timeout=timeout)
    return [folder / shard_name(i) for i in indices]


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
