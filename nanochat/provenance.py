"""Which data a tokenizer was trained on: recorded with it by the tokenizer stage, checked when a model trains.

A tokenizer's merges fit the text it was trained on. A model pretrained on other text still trains, but with
fewer bytes per token than it could have, and its val bpb is not comparable with runs that match; so this is a
one-line warning, never an error. The one idea: a data set's *identity* is computed from a ``data=`` config alone
(the hub repository for FineWeb-EDU / ClimbMix, whatever the mirror, folder or shard count; the resolved folder
for local data), so the base stage can compare before any source is opened or any shard downloaded.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from nanochat.hub_shards import hub_dataset

_warned: set[str] = set()


def data_name(name: str) -> str:
    """The canonical data= name (hub aliases resolved)."""
    spec = hub_dataset(name)
    return spec.name if spec is not None else str(name).lower()


def data_identity(name: str, options: dict | None = None) -> str:
    """What a `data=` config reads, independent of where its files are kept and how many shards are fetched."""
    spec = hub_dataset(name)
    if spec is not None:
        return spec.repo
    options = options or {}
    if data_name(name) == "local" and options.get("path"):
        return "local:" + str(Path(options["path"]).expanduser().resolve())
    return data_name(name)


def training_record(name: str, options: dict | None, source: Any, shards_read: set[int], chars: int,
                    max_chars: int, doc_cap: int) -> dict:
    """The `Tokenizer.training_data` of a tokenizer trained on `chars` characters of `source` (a `Source` built
    from the config `name`, `options`), read from the training shards `shards_read`."""
    shards = source.shards("train")
    return {
        "name": data_name(name),
        "dataset": data_identity(name, options),
        "description": source.description,
        "fingerprint": source.fingerprint,        # file names, sizes and row-group layout of every shard
        "train_shards": [shards[i].label for i in sorted(shards_read)],
        "chars": int(chars),
        "max_chars": int(max_chars),
        "doc_cap": int(doc_cap),
    }


def describe(record: dict | None) -> str:
    """One phrase for a training record: name, data set and the shards read."""
    if not record:
        return "unknown data"
    name, dataset = record.get("name", "?"), record.get("dataset", "?")
    text = name if dataset == name else f"{name} ({dataset})"
    shards = record.get("train_shards") or []
    if shards:
        span = shards[0] if len(shards) == 1 else f"{shards[0]} .. {shards[-1]}"
        text += f", {len(shards)} shard{'s' * (len(shards) != 1)} {span}"
    if record.get("chars"):
        text += f", {record['chars']:,} chars"
    return text


def data_mismatch(tokenizer: Any, name: str, options: dict | None = None) -> str | None:
    """The warning line when `tokenizer` was recorded as trained on other data than the `data=` config `name`,
    `options`; None when it matches or its training data is unknown (an older or hand-made tokenizer)."""
    record = getattr(tokenizer, "training_data", None)
    if not record or not record.get("dataset"):
        return None
    here = data_identity(name, options)
    if record["dataset"] == here:
        return None
    trained = record.get("name", "?")
    trained = trained if record["dataset"] == trained else f"{trained} ({record['dataset']})"
    now = data_name(name) if here == data_name(name) else f"{data_name(name)} ({here})"
    retrain = f"python train.py stage=tokenizer data={data_name(name)}"
    if data_name(name) == "local" and (options or {}).get("path"):
        retrain += f" data.path={options['path']}"
    return (f"warning: the tokenizer was trained on {trained} but this run trains on {now}; training goes on, with "
            f"fewer bytes per token and a val bpb not comparable to matched runs (to match: {retrain})")


def _is_rank_zero() -> bool:
    for var in ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID"):
        value = os.environ.get(var)
        if value not in (None, "", "0"):
            return False
    return True


def warn_if_other_data(tokenizer: Any, name: str, options: dict | None = None) -> str | None:
    """Print `data_mismatch`'s line to stderr once per process, on the first process of a run only; returns it."""
    message = data_mismatch(tokenizer, name, options)
    if message is not None and message not in _warned and _is_rank_zero():
        _warned.add(message)
        print(message, file=sys.stderr, flush=True)
    return message
