"""``python -m nanochat.dataset``: download FineWeb-EDU shards, report what data is on disk, build the sample corpus.

    python -m nanochat.dataset download n=120 dir=/data/shards
    python -m nanochat.dataset info
    python -m nanochat.dataset --help

The one idea: the settings are the `DatasetCommand` dataclass, read by the project's single command convention
(`nanochat.config.command.run_command`: `key=value`, typed, one-line errors, exit code 1). That layer needs
Hydra/OmegaConf, so it is imported inside `main` only and the data core stays importable without them.
"""
from __future__ import annotations

import os
import sys
from dataclasses import MISSING, dataclass
from typing import Optional, Sequence

from nanochat.common import NanochatError, get_base_dir, knob
from nanochat.fineweb import (FINEWEB_BASE_URL, FINEWEB_TOTAL_SHARDS, disk_needs_table, download_shards,
                              fineweb_dir, shard_name)

SUMMARY = """\
Commands:
  download  fetch FineWeb-EDU training shards 0..n-1 and the validation shard into dir (verified, resumable:
            run it again after an interruption)
  info      what is on disk: FineWeb-EDU shards, the sample corpus, and how many shards each model depth needs
  sample    build the offline sample corpus (from the Python standard library) and print where it is"""


@dataclass
class DatasetCommand:
    command: str = knob(MISSING, "what to do", choices=("download", "info", "sample"))
    n: Optional[int] = knob(None, "download: number of training shards (the validation shard comes too)", low=0)
    dir: Optional[str] = knob(None, "download/info: shard folder (default: <base dir>/base_data)")
    base_url: str = knob(FINEWEB_BASE_URL, "download: where the shards are served")
    workers: int = knob(4, "download: shards fetched at once", low=1)
    retries: int = knob(5, "download: attempts after the first one fails", low=0)
    backoff: float = knob(2.0, "download: seconds before the first retry (doubling after)", low=0)
    timeout: float = knob(60.0, "download: seconds a connection may stall", low=0)
    total_shards: int = knob(FINEWEB_TOTAL_SHARDS, "shards in the dataset; the last one is the validation shard",
                             low=2)


def info(directory: str | os.PathLike | None = None, total_shards: int = FINEWEB_TOTAL_SHARDS) -> str:
    """A few lines on the data on disk and the shards each model depth needs."""
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


def run(s: DatasetCommand) -> int:
    if s.command == "download":
        if s.n is None:
            raise NanochatError("download needs n=<number of training shards> (see --help)")
        paths = download_shards(s.n, base_url=s.base_url, directory=s.dir, workers=s.workers, retries=s.retries,
                                backoff=s.backoff, timeout=s.timeout, total_shards=s.total_shards)
        print(f"{len(paths)} shards ready in {paths[0].parent if paths else fineweb_dir(s.dir)}")
    elif s.command == "info":
        print(info(s.dir, s.total_shards))
    else:
        from nanochat.sources import sample_source

        src = sample_source()
        print(f"sample corpus: {src.files('train')[0].parent} ({src.num_documents('train')} train / "
              f"{src.num_documents('val')} val documents)")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns 0, or exits with code 1 after one `error: ...` line on stderr."""
    from nanochat.config.command import run_command

    try:
        return run_command(DatasetCommand, argv, run, prog="python -m nanochat.dataset", summary=SUMMARY,
                           positional="command")
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
