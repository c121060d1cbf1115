"""bench/parity.py's data side: on the parity shards our loader and the reference's hand out the same batches.

Only with NANOCHAT_REFERENCE=<checkout of the reference at 92d63d4> and the shared text (../shared/data or
$NANOCHAT_SHARED_DATA); skips otherwise. Slow: it writes the shards and trains the 4,096-token tokenizer with the
reference's script.
"""
import importlib.util
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _bench():
    spec = importlib.util.spec_from_file_location("parity_bench", ROOT / "bench" / "parity.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow
def test_reference_and_ours_read_the_same_batches(tmp_path):
    ref = Path(os.environ.get("NANOCHAT_REFERENCE", "/nonexistent"))
    if not (ref / "scripts" / "base_train.py").exists():
        pytest.skip("NANOCHAT_REFERENCE does not name a reference nanochat checkout")
    bench = _bench()
    if not bench.SHARED.exists():
        pytest.skip(f"no shared data at {bench.SHARED}")
    bench.prepare(tmp_path, ref)  # also checks that both tokenizers give the same ids on the validation shard
    got = bench.compare_batches(tmp_path, ref, 3, 2)
    assert (got["train_batches_equal"], got["val_batches_equal"]) == (3, 2)
    # our decoded-text byte count can only add bytes (U+FFFD for partial UTF-8), never drop any
    assert got["val_bytes_decoded"] >= got["val_bytes_raw"] > 0
