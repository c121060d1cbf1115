"""Two DDP processes (gloo, CPU) train the same weights as one process with the same global batch.

The corpus makes both runs see the same documents in every optimizer step: each document is exactly one row
(64 bytes + BOS = seq_len + 1 tokens, byte-level tokenizer), each parquet row group holds one device batch (4
documents), and rank r of 2 reads row groups r, r+2, ... of every file. One process (device batch 4, accumulation
2) takes row groups 2j and 2j+1 in step j; with two ranks (accumulation 1) rank 0 takes 2j and rank 1 takes 2j+1.
So the only differences are where the gradients are summed (DDP all-reduce vs accumulation): float rounding.
"""
from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from tests.helpers import run_train, tiny_train_overrides

pytestmark = pytest.mark.slow  # two train.py runs, one of them with two processes (~1 min on 2 cores)

STEPS = 3
SEQ = 64


def write_row_corpus(folder: Path, n_files: int, seed: int = 0) -> Path:
    """Parquet shards of distinct random 64-character documents, 2 row groups of 4 per file."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = random.Random(seed)
    alphabet = "abcdefghijklmnopqrstuvwxyz .,0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    folder.mkdir(parents=True)
    for i in range(n_files):
        docs = ["".join(rng.choice(alphabet) for _ in range(SEQ)) for _ in range(8)]
        pq.write_table(pa.table({"text": docs}), folder / f"shard_{i:03d}.parquet", row_group_size=4)
    return folder


def exported_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "model" / "model.pt", map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from nanochat.tokenizer import Tokenizer

    root = tmp_path_factory.mktemp("ddp")
    tok = root / "tok"
    Tokenizer.byte_level().save(tok)
    corpus = write_row_corpus(root / "corpus", n_files=STEPS + 1)
    common = {"data.loader.buffer_docs": 1, "data.loader.packing": "bestfit", "data.val_fraction": 1 / (STEPS + 1),
              "stage.total_batch_tokens": 2 * 4 * SEQ, "model.sequence_len": SEQ, "stage.eval_every": 0,
              "stage.save_every": 100}
    out = {}
    for name, extra in (("one", {}), ("two", {"hardware": "cpu_ddp"})):
        args = tiny_train_overrides(name, corpus, tok, STEPS, **common, **extra)
        proc = run_train(args, root, timeout=900)
        assert proc.returncode == 0, proc.stderr[-3000:]
        out[name] = (proc, root / "outputs" / name)
    return out


def test_plans_split_the_same_global_batch(runs):
    one, two = runs["one"][0].stdout, runs["two"][0].stdout
    assert f"{2 * 4 * SEQ:,} tokens = 4 x {SEQ} x 1 device(s) x 2 accumulation" in one
    assert f"{2 * 4 * SEQ:,} tokens = 4 x {SEQ} x 2 device(s) x 1 accumulation" in two


def test_two_processes_train_the_same_weights_as_one(runs):
    a, b = exported_weights(runs["one"][1]), exported_weights(runs["two"][1])
    assert sorted(a) == sorted(b)
    for key in a:
        assert torch.allclose(a[key], b[key], rtol=1e-3, atol=1e-4), \
            f"{key}: max difference {(a[key] - b[key]).abs().max():.3g}"
    # not trivially equal: the zero-initialised lm_head moved far more than the tolerance
    assert a["lm_head.weight"].abs().max() > 1e-2


SFT_MIXTURE = """
seed: 3
train:
  - {task: identity, size: 8}
  - {task: arithmetic, size: 8, split: train}
"""


def test_sft_two_processes_train_the_same_weights_as_one(runs, tmp_path):
    """SFT: rank r takes conversations r, r+2, ...; one process takes them in order; each step covers the same
    four conversations, and the loss is normalised by the supervised count of the whole step on all ranks."""
    root = runs["one"][1].parent.parent
    (tmp_path / "mix.yaml").write_text(SFT_MIXTURE)
    out = {}
    for name, extra in (("sft_one", ["hardware=cpu"]), ("sft_two", ["hardware=cpu_ddp"])):
        args = [*extra, "stage=sft", f"stage.init_from={runs['one'][1] / 'model'}", f"mixture={tmp_path / 'mix.yaml'}",
                "stage.num_iterations=3", "stage.examples_per_step=4", "stage.device_batch_size=2",
                "stage.eval_every=0", "stage.eval_batches=1", "stage.sample_every=0", "logger=none",
                f"run_name={name}", f"hydra.run.dir={root / 'outputs' / name}"]
        proc = run_train(args, root, timeout=900)
        assert proc.returncode == 0, proc.stderr[-3000:]
        out[name] = root / "outputs" / name
    a, b = exported_weights(out["sft_one"]), exported_weights(out["sft_two"])
    start = exported_weights(runs["one"][1])
    moved = max((a[k] - start[k]).abs().max() for k in a)
    assert moved > 1e-3  # SFT changed the weights well beyond the tolerance
    for key in a:  # float rounding only (summation order, Muon's bf16 Newton-Schulz)
        assert torch.allclose(a[key], b[key], rtol=1e-3, atol=1e-4), \
            f"{key}: max difference {(a[key] - b[key]).abs().max():.3g}"
