"""stage=tokenizer: train the BPE tokenizer on the configured data, save it, report compression.

The saved tokenizer records the data it was trained on (`nanochat.provenance`: data set, shards read, source
fingerprint), so a model later pretrained on other data gets a one-line warning.
"""
from __future__ import annotations

import json
import time

from omegaconf import DictConfig
from tqdm import tqdm

from nanochat.stages.cli import open_source, run_dir, source_options
from nanochat.common import NanochatError, atomic_write_bytes

# nanochat's first release (v0) and its later versions both split digits in runs of 1-2 (GPT-4 uses 1-3)
PATTERNS = {"v0": "GPT4_PATTERN_LATE", "late": "GPT4_PATTERN_LATE", "gpt4": "GPT4_PATTERN"}


def resolve_pattern(pattern: str) -> str:
    import nanochat_rustbpe

    if pattern in PATTERNS:
        return getattr(nanochat_rustbpe, PATTERNS[pattern])
    try:  # fail before reading any data
        nanochat_rustbpe.split("", pattern)
    except ValueError as e:
        raise NanochatError(f"invalid split pattern {pattern!r}: {e}") from None
    return pattern


def _counting(texts, bar, total: list[int]):
    for text in texts:
        bar.update(len(text))
        total[0] += len(text)
        yield text


def run(cfg: DictConfig) -> dict:
    from nanochat.dataset import iter_texts
    from nanochat.provenance import describe, training_record
    from nanochat.tokenizer import Tokenizer, compression_ratio, default_tokenizer_dir, reference_encodings

    st, vocab_size, max_chars = cfg.stage, cfg.data.tokenizer.vocab_size, cfg.data.tokenizer.max_chars
    out = run_dir()
    source = open_source(cfg.data)
    pattern = resolve_pattern(st.pattern)
    print(f"training tokenizer: vocab {vocab_size:,} (incl. 9 specials), up to {max_chars:,} chars "
          f"from '{cfg.data.name}', documents capped at {st.doc_cap:,} chars", flush=True)
    t0 = time.time()
    shards_read: set[int] = set()
    chars = [0]
    texts = iter_texts(source, split="train", max_chars=max_chars, doc_cap=st.doc_cap, shards_read=shards_read)
    with tqdm(total=max_chars, unit="char", unit_scale=True, desc="reading", mininterval=1.0) as bar:
        tokenizer = Tokenizer.train(_counting(texts, bar, chars), vocab_size=vocab_size, pattern=pattern)
    train_s = time.time() - t0
    name, options = source_options(cfg.data)
    tokenizer.training_data = training_record(name, options, source, shards_read, chars[0], max_chars, st.doc_cap)

    tokenizer.save(out / "tokenizer")
    latest = default_tokenizer_dir()
    tokenizer.save(latest)

    # held-out compression: bytes per token on the validation split
    val_docs = [t for _, t in zip(range(st.eval_docs), iter_texts(source, split="val", doc_cap=st.doc_cap))]
    if not val_docs:
        raise NanochatError(f"data '{cfg.data.name}' has no validation documents to evaluate the tokenizer on")
    rows = {"nanochat": (tokenizer.vocab_size, compression_ratio(tokenizer, val_docs))}
    for name, enc in reference_encodings().items():
        rows[name] = (enc.n_vocab, compression_ratio(enc, val_docs))
    print(f"\ntrained in {train_s:.1f} s on {describe(tokenizer.training_data)}; saved to {out / 'tokenizer'} "
          f"and {latest}")
    print(f"compression on {len(val_docs)} held-out documents (bytes per token, higher is better):")
    for name, (vocab, ratio) in rows.items():
        print(f"  {name:<12} vocab {vocab:>7,}  {ratio:6.3f}")
    if len(rows) == 1:
        print("  (cl100k_base / o200k_base not available offline: comparison skipped)")
    report = {"stage": "tokenizer", "train_seconds": train_s, "vocab_size": tokenizer.vocab_size,
              "pattern": st.pattern, "compression": rows, "training_data": tokenizer.training_data}
    atomic_write_bytes(out / "tokenizer_report.json", json.dumps(report, indent=2).encode())
    atomic_write_bytes(out / "summary.json", json.dumps({**report, "fit_seconds": train_s}, indent=2).encode())
    return report
