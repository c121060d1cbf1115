"""``python -m nanochat.dataset``: download hub shards (FineWeb-EDU, ClimbMix), report what data is on disk, build
the sample corpus.

    python -m nanochat.dataset download n=120 dir=/data/shards
    python -m nanochat.dataset download data=climbmix n=150
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
from nanochat.hub_shards import (HUB_DATASETS, disk_needs_table, download_shards, hub_dataset, present_shards,
                                 shard_name)

SUMMARY = """\
Commands:
  download  fetch training shards 0..n-1 of a hub data set (data=fineweb_edu, the default, or data=climbmix) and
            its validation shard (the last one) into dir; verified, resumable (run it again after an
            interruption), after a disk-space estimate
  info      what is on disk: hub shards, the sample corpus, and how many shards each model depth needs
  sample    build the offline sample corpus (from the Python standard library) and print where it is"""


@dataclass
class DatasetCommand:
    command: str = knob(MISSING, "what to do", choices=("download", "info", "sample"))
    data: str = knob("fineweb_edu", "download/info: which hub data set", choices=tuple(HUB_DATASETS))
    n: Optional[int] = knob(None, "download: number of training shards (the validation shard comes too)", low=0)
    dir: Optional[str] = knob(None, "download/info: shard folder (default: <base dir>/base_data for fineweb_edu, "
                                    "<base dir>/base_data_climbmix for climbmix)")
    base_url: Optional[str] = knob(None, "download: where the shards are served (default: the data set's hub URL)")
    workers: int = knob(4, "download: shards fetched at once", low=1)
    retries: int = knob(5, "download: attempts after the first one fails", low=0)
    backoff: float = knob(2.0, "download: seconds before the first retry (doubling after)", low=0)
    timeout: float = knob(60.0, "download: seconds a connection may stall", low=0)
    total_shards: Optional[int] = knob(None, "shards in the data set; the last one is the validation shard "
                                             "(default: 1823 fineweb_edu, 6543 climbmix)", low=2)


def _folder_line(name: str, directory: str | os.PathLike | None, total_shards: int | None) -> str:
    spec = HUB_DATASETS[name]
    folder = spec.folder(directory)
    val_index = (total_shards or spec.total_shards) - 1
    present = present_shards(folder)
    partial = sorted(folder.glob("shard_*.parquet.partial")) if folder.is_dir() else []
    size = sum((folder / shard_name(i)).stat().st_size for i in present)
    n_train = sum(1 for i in present if i != val_index)
    return (f"{name}: {folder}: {n_train} training shards, validation shard "
            f"{'present' if val_index in present else 'missing'}, {size / 1e9:.2f} GB"
            + (f", {len(partial)} unfinished (.partial) downloads" if partial else ""))


def info(directory: str | os.PathLike | None = None, total_shards: int | None = None,
         data: str = "fineweb_edu") -> str:
    """A few lines on the data on disk and the shards each model depth needs. With `directory`, the hub data set
    `data` in that folder; otherwise every hub data set in its default folder."""
    from nanochat.sample_corpus import read_manifest, sample_dir

    spec = hub_dataset(data)
    if spec is None:
        raise NanochatError(f"unknown hub data set {data!r} (choose {', '.join(HUB_DATASETS)})")
    lines = [f"base dir: {get_base_dir()}"]
    if directory is not None:
        lines.append(_folder_line(spec.name, directory, total_shards))
    else:
        lines += [_folder_line(name, None, total_shards if name == spec.name else None) for name in HUB_DATASETS]
    manifest = read_manifest()
    if manifest:
        lines.append(f"sample: {sample_dir()}: {len(manifest['files'])} shards, {sum(manifest['documents'])} "
                     f"documents, {manifest['chars'] / 1e6:.1f} M chars")
    else:
        lines.append("sample: not built yet (built automatically on first use)")
    lines.append(f"shards needed (tokens = 20 x params, 4.8 chars/token, 250M chars/shard, +10% margin; disk at "
                 f"~{spec.bytes_per_shard / 1e6:.0f} MB/shard):")
    lines.append(disk_needs_table(data=spec))
    return "\n".join(lines)


def run(s: DatasetCommand) -> int:
    if s.command == "download":
        if s.n is None:
            raise NanochatError("download needs n=<number of training shards> (see --help)")
        paths = download_shards(s.n, data=s.data, base_url=s.base_url, directory=s.dir, workers=s.workers,
                                retries=s.retries, backoff=s.backoff, timeout=s.timeout, total_shards=s.total_shards)
        print(f"{len(paths)} {HUB_DATASETS[s.data].title} shards ready in "
              f"{paths[0].parent if paths else HUB_DATASETS[s.data].folder(s.dir)}")
    elif s.command == "info":
        print(info(s.dir, s.total_shards, s.data))
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
