"""Where pretraining documents come from: `get_source(name, **cfg)` picks one of the sources by its name.

* ``fineweb_edu`` - Karpathy's shuffled repack of FineWeb-EDU (`nanochat.fineweb`: shards, download, disk needs).
* ``local`` - any folder (or single file) of parquet, jsonl or ``.txt`` documents (`nanochat.sources`).
* ``sample`` - the offline corpus built from the Python standard library (`nanochat.sample_corpus`).

The one idea: every source has the same shape (per split, shards of row groups of documents; see
`nanochat.sources`), so the tokenizer, the data loader and the evaluations never ask which one they read. This
module is also the data layer's front door: the names callers import (`Source`, `iter_texts`, `download_shards`,
`FINEWEB_BASE_URL`, ...) are re-exported here, and ``python -m nanochat.dataset`` is its command line
(`nanochat.dataset_cli`)::

    python -m nanochat.dataset download n=8 [dir=PATH] [base_url=URL] [workers=4] [retries=5]
    python -m nanochat.dataset info [dir=PATH]
    python -m nanochat.dataset sample          # build the offline sample corpus and print where it is
"""
from __future__ import annotations

import sys
from typing import Any

from nanochat.common import NanochatError
from nanochat.dataset_cli import info, main
from nanochat.fineweb import (FINEWEB_BASE_URL, FINEWEB_BYTES_PER_SHARD, FINEWEB_CHARS_PER_SHARD,
                              FINEWEB_TOTAL_SHARDS, disk_needs, disk_needs_table, download_shard, download_shards,
                              fineweb_dir, fineweb_source, params_for_depth, shard_name, shards_needed, verify_shard)
from nanochat.sources import (GROUP_DOCS, SPLITS, Shard, Source, iter_texts, local_source, parquet_folder_source,
                              sample_source)

__all__ = ["FINEWEB_BASE_URL", "FINEWEB_BYTES_PER_SHARD", "FINEWEB_CHARS_PER_SHARD", "FINEWEB_TOTAL_SHARDS",
           "GROUP_DOCS", "SPLITS", "Shard", "Source", "disk_needs", "disk_needs_table", "download_shard",
           "download_shards", "fineweb_dir", "fineweb_source", "get_source", "info", "iter_texts", "local_source",
           "main", "parquet_folder_source", "params_for_depth", "sample_source", "shard_name", "shards_needed",
           "verify_shard"]

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


if __name__ == "__main__":
    sys.exit(main())
