"""Where pretraining documents come from: `get_source(name, **cfg)` picks one of the sources by its name.

* ``fineweb_edu``, ``climbmix`` - Karpathy's shuffled repacks of FineWeb-EDU and NVIDIA ClimbMix, parquet shards
  on the hub (`nanochat.hub_shards`: shards, download, disk needs).
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
from nanochat.hub_shards import (CLIMBMIX, FINEWEB_EDU, HUB_DATASETS, HubShards, disk_needs, disk_needs_table,
                                 download_shard, download_shards, hub_dataset, hub_source, params_for_depth,
                                 shard_name, shards_needed, verify_shard)
from nanochat.sources import (GROUP_DOCS, SPLITS, Shard, Source, iter_texts, local_source, parquet_folder_source,
                              sample_source)

__all__ = ["CLIMBMIX", "FINEWEB_EDU", "GROUP_DOCS", "HUB_DATASETS", "HubShards", "SPLITS", "Shard", "Source",
           "disk_needs", "disk_needs_table", "download_shard", "download_shards", "get_source", "hub_dataset",
           "hub_source", "info", "iter_texts", "local_source", "main", "parquet_folder_source", "params_for_depth",
           "sample_source", "shard_name", "shards_needed", "verify_shard"]

_ALIASES = {"local": "local", "sample": "sample"}


def get_source(name: str, **cfg: Any) -> Source:
    """Build a source from a config: name in {fineweb_edu, climbmix, local, sample} plus that source's options.

    fineweb_edu, climbmix: dir, num_shards, download, base_url, workers (or download_workers), total_shards,
                 retries, backoff, timeout
    local:       path, val_fraction, val_file
    sample:      dir
    Unknown keys are an error; None values are ignored (so a Hydra group can list every key).
    """
    cfg = {k: v for k, v in cfg.items() if v is not None}
    kind = _ALIASES.get(str(name).lower())
    try:
        if hub_dataset(name) is not None:
            return hub_source(name, **cfg)
        if kind == "local":
            if "path" not in cfg:
                raise NanochatError("data source 'local' needs path=<folder or file>")
            return local_source(**cfg)
        if kind == "sample":
            return sample_source(**cfg)
    except TypeError as e:
        raise NanochatError(f"bad options for data source {name!r}: {e}") from e
    raise NanochatError(f"unknown data source {name!r} (choose fineweb_edu, climbmix, local or sample)")


if __name__ == "__main__":
    sys.exit(main())
