"""Pretraining corpora published as numbered parquet shards on the Hugging Face hub: FineWeb-EDU and ClimbMix.

Both are Karpathy's shuffled repacks: ``shard_00000.parquet``, ``shard_00001.parquet``, ... (column ``text``, row
groups of 1024 documents, about 250M characters each), and the LAST shard of the data set is always the validation
shard. A `HubShards` spec holds what differs between them (repository, shard count, local folder); the source, the
download and the disk arithmetic are one piece of code for both.

The one idea: a shard counts as present only when it verifies (right size, readable parquet footer, a ``text``
column), so a folder never holds half a shard. Downloads go through `nanochat.download` (unfinished bytes stay in
``.partial`` files that the next call resumes) after a disk-space estimate that stops a download that cannot fit.
"""
from __future__ import annotations

import math
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from nanochat.common import NanochatError, get_base_dir
from nanochat.download import Permanent, download_file, download_files
from nanochat.sources import Source, parquet_folder_source

NO_TEXT_COLUMN = "no 'text' column"


@dataclass(frozen=True)
class HubShards:
    """One shard set on the hub; the last shard (``total_shards - 1``) is the validation shard."""

    name: str                  # the data= config name
    title: str                 # for messages
    repo: str                  # hub dataset id
    total_shards: int
    folder_name: str           # default local folder under the base dir
    chars_per_shard: float = 250e6
    # planning figure for the disk estimate until shards are on disk (then their mean size is used): the repack
    # writes 250M chars per shard with zstd level 3, "~100 MB" by its own account (0.40 bytes/char; the same writer
    # settings give 0.33 bytes/char on our English sample corpus, so 100 MB errs on the safe side)
    bytes_per_shard: float = 100e6

    @property
    def base_url(self) -> str:
        return f"https://huggingface.co/datasets/{self.repo}/resolve/main"

    def folder(self, directory: str | os.PathLike | None = None) -> Path:
        return Path(directory) if directory else get_base_dir() / self.folder_name


FINEWEB_EDU = HubShards("fineweb_edu", "FineWeb-EDU", "karpathy/fineweb-edu-100b-shuffle", 1823, "base_data")
CLIMBMIX = HubShards("climbmix", "ClimbMix", "karpathy/climbmix-400b-shuffle", 6543, "base_data_climbmix")
HUB_DATASETS = {spec.name: spec for spec in (FINEWEB_EDU, CLIMBMIX)}
_ALIASES = {"fineweb": "fineweb_edu", "fineweb-edu": "fineweb_edu", "climbmix-400b": "climbmix"}


def hub_dataset(name: str | HubShards) -> HubShards | None:
    """The spec of a hub shard set by its data= name (or an alias); None for any other source."""
    if isinstance(name, HubShards):
        return name
    key = str(name).lower()
    return HUB_DATASETS.get(_ALIASES.get(key, key))


def _spec(data: str | HubShards) -> HubShards:
    spec = hub_dataset(data)
    if spec is None:
        raise NanochatError(f"{data!r} is not a hub shard set (choose {', '.join(HUB_DATASETS)})")
    return spec


def shard_name(index: int) -> str:
    return f"shard_{index:05d}.parquet"


def present_shards(folder: Path) -> list[int]:
    """Indices of the shard files in `folder` (by name; `verify_shard` says whether each is complete)."""
    names = (p.name for p in folder.glob("shard_*.parquet")) if folder.is_dir() else ()
    return sorted(int(m.group(1)) for n in names if (m := re.fullmatch(r"shard_(\d{5})\.parquet", n)))


# ----------------------------------------------------------------------------------------------------------------
# The source


def hub_source(data: str | HubShards, dir: str | os.PathLike | None = None, num_shards: int | None = None,
               download: bool = False, base_url: str | None = None, workers: int = 4,
               total_shards: int | None = None, download_workers: int | None = None, **download_kwargs) -> Source:
    """The shards of `data` in `dir` (default <base dir>/<its folder>): training shards 0..num_shards-1 (default:
    all present, contiguous from 0), validation = the last shard of the data set.

    With download=True the missing shards (and the validation shard) are fetched first (`download_workers` is an
    alias of `workers`).
    """
    spec = _spec(data)
    total = total_shards or spec.total_shards
    if download_workers is not None:
        workers = download_workers
    folder = spec.folder(dir)
    val_index = total - 1
    if download:
        if num_shards is None:
            raise NanochatError(f"{spec.name}: set num_shards to download")
        download_shards(num_shards, data=spec, base_url=base_url, directory=folder, workers=workers,
                        total_shards=total, **download_kwargs)
    present = present_shards(folder)
    train_present = [i for i in present if i != val_index]
    if num_shards is None:  # all present training shards, contiguous from 0 (a gap means an unfinished download)
        n = 0
        while n < len(train_present) and train_present[n] == n:
            n += 1
        num_shards = n
    num_shards = min(num_shards, total - 1)
    have = set(train_present)
    missing = [i for i in range(num_shards) if i not in have]
    hint = (f"run: python -m nanochat.dataset download data={spec.name} n={max(num_shards, 1)}"
            + (f" dir={folder}" if dir else ""))
    if num_shards == 0:
        raise NanochatError(f"no {spec.title} shards in {folder}; {hint}")
    if missing:
        raise NanochatError(f"{len(missing)} of {num_shards} {spec.title} shards missing in {folder} "
                            f"(first: {shard_name(missing[0])}); {hint}")
    if val_index not in present:
        raise NanochatError(f"{spec.title} validation shard {shard_name(val_index)} missing in {folder}; {hint}")
    return parquet_folder_source(spec.name, [folder / shard_name(i) for i in range(num_shards)],
                                 [folder / shard_name(val_index)], f"{spec.title} in {folder}")


# ----------------------------------------------------------------------------------------------------------------
# Verification and download


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


@dataclass
class DiskEstimate:
    """What a download will add to the disk, before it starts."""

    title: str
    folder: Path
    shards: int                # shards still to fetch
    bytes_per_shard: float
    measured_from: int         # shards on disk the per-shard size was measured from (0: the planning figure)
    partial_bytes: int         # already in .partial files (resumed, not fetched again)
    free_bytes: int

    @property
    def need_bytes(self) -> int:
        return max(0, int(self.shards * self.bytes_per_shard) - self.partial_bytes)

    @property
    def fits(self) -> bool:
        return self.need_bytes <= self.free_bytes

    def describe(self) -> str:
        basis = (f"the mean of {self.measured_from} shard{'s' * (self.measured_from != 1)} on disk"
                 if self.measured_from else "the estimate for ~250M chars, zstd-compressed")
        return (f"{self.title}: {self.shards} shard{'s' * (self.shards != 1)} to fetch into {self.folder}, about "
                f"{self.need_bytes / 1e9:.2f} GB ({self.bytes_per_shard / 1e6:.0f} MB per shard, {basis}); "
                f"{self.free_bytes / 1e9:.1f} GB free")


def _free_bytes(folder: Path) -> int:
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return shutil.disk_usage(probe).free


def estimate_download(data: str | HubShards, folder: Path, todo: Sequence[int], present: Sequence[int] = ()
                      ) -> DiskEstimate:
    """Disk needed for shards `todo` in `folder`: their count times the mean size of the verified shards
    `present` (the data set's planning figure when none), less what unfinished downloads already hold."""
    spec = _spec(data)
    sizes = [(folder / shard_name(i)).stat().st_size for i in present]
    per_shard = sum(sizes) / len(sizes) if sizes else spec.bytes_per_shard
    partial = 0
    for i in todo:
        p = folder / (shard_name(i) + ".partial")
        partial += p.stat().st_size if p.exists() else 0
    return DiskEstimate(spec.title, folder, len(todo), per_shard, len(sizes), partial, _free_bytes(folder))


def download_shards(n: int, base_url: str | None = None, directory: str | os.PathLike | None = None,
                    workers: int = 4, retries: int = 5, backoff: float = 2.0, timeout: float = 60.0,
                    total_shards: int | None = None, include_val: bool = True, progress: bool = True,
                    indices: Sequence[int] | None = None, data: str | HubShards = FINEWEB_EDU) -> list[Path]:
    """Make sure shards 0..n-1 of `data` (and its validation shard, the last one) are present and verified in
    `directory`.

    First estimates the disk space (one line; a download that cannot fit stops here with an error). Runs up to
    `workers` downloads at once; already-present verified shards are skipped. Stops at the first failure with a
    NanochatError (shards finished before it stay, unfinished ones are left as `.partial` files that the next call
    resumes, never as shards).
    """
    spec = _spec(data)
    total = total_shards or spec.total_shards
    folder = spec.folder(directory)
    if indices is None:
        if n < 0:
            raise NanochatError(f"n must be >= 0, got {n}")
        indices = list(range(min(n, total - 1)))
        if include_val:
            indices.append(total - 1)
    indices = list(dict.fromkeys(int(i) for i in indices))
    for i in indices:
        if not 0 <= i < total:
            raise NanochatError(f"shard index {i} out of range 0..{total - 1}")
    base_url = (base_url or spec.base_url).rstrip("/")
    todo, done = [], []
    for i in indices:
        (done if verify_shard(folder / shard_name(i)) is None else todo).append(i)
    if todo:
        estimate = estimate_download(spec, folder, todo, done)
        if not estimate.fits:
            per = max(estimate.bytes_per_shard, 1.0)
            fit = max(0, int((estimate.free_bytes + estimate.partial_bytes) / per) - 1)
            raise NanochatError(f"not enough disk space: {estimate.describe()}; free space or fetch fewer shards "
                                f"(about n={fit} fit)")
        if progress:
            print(estimate.describe(), flush=True)
    download_files([(f"{base_url}/{shard_name(i)}", folder / shard_name(i)) for i in todo], _verify_downloaded,
                   workers=workers, progress=progress, desc=f"{spec.title} to {folder}", unit="shard",
                   retries=retries, backoff=backoff, timeout=timeout)
    return [folder / shard_name(i) for i in indices]


def download_for(name: str, options: dict) -> list[Path]:
    """The download a `data=` config asks for before training (none unless it is a hub shard set with
    download=true): its num_shards training shards and the validation shard."""
    spec = hub_dataset(name)
    if spec is None or not options.get("download"):
        return []
    opts = {k: v for k, v in options.items() if v is not None}
    if "workers" not in opts and "download_workers" in opts:
        opts["workers"] = opts["download_workers"]  # the data config's name for it
    keys = ("base_url", "workers", "retries", "backoff", "timeout", "total_shards")
    return download_shards(int(opts["num_shards"]), data=spec, directory=opts.get("dir"),
                           **{k: opts[k] for k in keys if k in opts})


# ----------------------------------------------------------------------------------------------------------------
# Disk / shard needs per model depth


def params_for_depth(depth: int, vocab_size: int = 65_536) -> int:
    """Approximate parameter count of the depth-`depth` model (d_model = 64 * depth)."""
    d = 64 * depth
    return 2 * vocab_size * d + 12 * depth * d * d


def shards_needed(tokens: float, chars_per_token: float = 4.8, chars_per_shard: float = 250e6,
                  margin: float = 1.1) -> int:
    """Training shards that hold `tokens` tokens (with a safety margin)."""
    return max(1, math.ceil(tokens * chars_per_token * margin / chars_per_shard))


def disk_needs(depth: int, ratio: float = 20.0, vocab_size: int = 65_536, chars_per_token: float = 4.8,
               margin: float = 1.1, data: str | HubShards = FINEWEB_EDU) -> dict:
    """Parameters, training tokens (ratio x params), shards and gigabytes (with the validation shard) for one
    depth."""
    spec = _spec(data)
    params = params_for_depth(depth, vocab_size)
    tokens = ratio * params
    shards = shards_needed(tokens, chars_per_token, spec.chars_per_shard, margin)
    return {"depth": depth, "params": params, "tokens": int(tokens), "shards": shards,
            "gigabytes": round((shards + 1) * spec.bytes_per_shard / 1e9, 1)}


def disk_needs_table(depths: Sequence[int] = (4, 8, 12, 16, 20, 26, 32), **kwargs) -> str:
    lines = ["| depth | params | tokens (20x) | shards | disk |", "|---:|---:|---:|---:|---:|"]
    for depth in depths:
        n = disk_needs(depth, **kwargs)
        lines.append(f"| d{depth} | {n['params'] / 1e6:.0f}M | {n['tokens'] / 1e9:.1f}B | {n['shards']} "
                     f"| {n['gigabytes']:.1f} GB |")
    return "\n".join(lines)
