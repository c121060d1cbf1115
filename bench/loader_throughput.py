"""Benchmark: PackingLoader throughput (tokens/s) on ONE CPU core, with a real BPE tokenizer.

Two document sets:
  * sample   - the embedded offline corpus (Python standard library docstrings/comments)
  * fineweb  - a generated FineWeb-like parquet set: documents repackaged from the installed packages' docstrings
               and text files, written as shards with row groups of 1024 documents and a `text` column
The tokenizer is the trained nanochat tokenizer when one is saved (``--tokenizer DIR`` or the default location),
else a nanochat BPE tokenizer trained here on the FineWeb-like set (vocab 32,768 by default, cached under
bench/results/); it runs through tiktoken.

Each configuration runs in its own subprocess pinned to N cores (``os.sched_setaffinity``), with
``torch.set_num_threads(N)`` and N tokenizer threads; the loader's background thread, tokenization and packing all
share those cores. Throughput is measured after the first batch (the packing buffer is then full), median of the
repetitions.

    python bench/loader_throughput.py            # ~30 MB fineweb-like set, 3 repetitions
    python bench/loader_throughput.py --quick    # smaller, 1 repetition
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
TARGET = 300_000
sys.path.insert(0, str(ROOT))


# ----------------------------------------------------------------------------------------------- data


def fineweb_like(mb: float) -> Path:
    """Parquet shards (row groups of 1024 docs, column `text`) of text from the installed packages; cached."""
    import random

    import pyarrow as pa
    import pyarrow.parquet as pq

    from nanochat.sample_corpus import iter_documents

    out = RESULTS / f"loader_fineweb_like_{mb:g}mb"
    if (out / "done").exists():
        return out
    out.mkdir(parents=True, exist_ok=True)
    docs: list[str] = []
    chars = 0
    roots = []
    for key in ("purelib", "platlib", "stdlib"):
        p = Path(sysconfig.get_paths()[key])
        if p.is_dir() and p.resolve() not in [r.resolve() for r in roots]:
            roots.append(p)
    for root in roots:
        # docstrings + prose comments of every package, chunked like web documents (<= 8k chars)
        for doc in iter_documents(root=root, max_chars=8000, include_topics=False):
            docs.append(doc)
            chars += len(doc)
            if chars >= mb * 1e6:
                break
        if chars >= mb * 1e6:
            break
        for ext in ("*.md", "*.rst", "*.txt"):
            for p in sorted(root.rglob(ext)):
                try:
                    text = p.read_text(encoding="utf-8")
                except (OSError, UnicodeDecodeError):
                    continue
                if len(text) > 200:
                    docs.append(text[:20_000])
                    chars += len(docs[-1])
    random.Random(0).shuffle(docs)
    per_shard = 2 * 1024  # FineWeb shards hold ~53 row groups; fewer here so the set has several shards
    for i in range(0, len(docs), per_shard):
        pq.write_table(pa.table({"text": docs[i: i + per_shard]}), out / f"shard_{i // per_shard:05d}.parquet",
                       row_group_size=1024)
    (out / "done").write_text(json.dumps({"docs": len(docs), "chars": chars}))
    return out


def tokenizer_dir(vocab: int, train_dir: Path, explicit: str | None) -> str:
    """A saved nanochat tokenizer: the given one, the default trained one, or one trained here (cached)."""
    from nanochat.tokenizer import Tokenizer, default_tokenizer_dir

    if explicit:
        return explicit
    if (default_tokenizer_dir() / "tokenizer.pkl").exists():
        return str(default_tokenizer_dir())
    out = RESULTS / f"loader_tokenizer_{vocab}"
    if not (out / "tokenizer.pkl").exists():
        import pyarrow.parquet as pq

        def texts():
            files = sorted(train_dir.glob("*.parquet"))
            for f in files[:-1] if len(files) > 1 else files:
                for t in pq.read_table(f).column("text").to_pylist():
                    yield t[:10_000]

        t0 = time.time()
        Tokenizer.train(texts(), vocab).save(out)
        print(f"(trained a {vocab}-token BPE tokenizer in {time.time() - t0:.0f} s)", flush=True)
    return str(out)


# ----------------------------------------------------------------------------------------------- worker


def worker(args: argparse.Namespace) -> None:
    cores = sorted(os.sched_getaffinity(0))[: args.cores]
    os.sched_setaffinity(0, set(cores))
    import torch

    torch.set_num_threads(args.cores)
    from nanochat.dataloader import PackingLoader
    from nanochat.dataset import get_source

    from nanochat.tokenizer import Tokenizer

    tok = Tokenizer.load(args.tokenizer_dir)
    if args.data == "sample":
        source = get_source("sample")
    else:
        source = get_source("local", path=args.data_dir, val_fraction=0.05)
    loader = PackingLoader(source, tok, args.batch_size, args.seq_len, buffer_docs=args.buffer_docs,
                           tokenizer_threads=args.cores)
    it = iter(loader)
    t0 = time.perf_counter()
    next(it)
    first = time.perf_counter() - t0
    tokens = 0
    t1 = time.perf_counter()
    while tokens < args.tokens:
        inputs, _ = next(it)
        tokens += inputs.numel()
    dt = time.perf_counter() - t1
    it.close()
    stats = loader.stats
    print(json.dumps({"tok_s": tokens / dt, "first_batch_s": first, "cropped_fraction": stats["cropped_fraction"],
                      "epochs": stats["epoch"], "cores": cores}))


def run_config(data: str, data_dir: str, cores: int, tok_dir: str, opts: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--worker", "--data", data, "--data-dir", data_dir, "--cores", str(cores),
           "--tokenizer-dir", tok_dir, "--tokens", str(opts.tokens), "--batch-size", str(opts.batch_size),
           "--seq-len", str(opts.seq_len), "--buffer-docs", str(opts.buffer_docs)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"worker failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--reps", type=int, default=None)
    ap.add_argument("--mb", type=float, default=None, help="size of the generated FineWeb-like set")
    ap.add_argument("--vocab", type=int, default=32768)
    ap.add_argument("--tokenizer", default=None, help="a saved nanochat tokenizer folder")
    ap.add_argument("--tokens", type=int, default=None, help="tokens measured per run")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=2048)
    ap.add_argument("--buffer-docs", type=int, default=1000)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--data", default="sample", help=argparse.SUPPRESS)
    ap.add_argument("--data-dir", default="", help=argparse.SUPPRESS)
    ap.add_argument("--cores", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--tokenizer-dir", default="", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args)
    reps = args.reps or (1 if args.quick else 3)
    mb = args.mb or (8 if args.quick else 30)
    args.tokens = args.tokens or (1_000_000 if args.quick else 4_000_000)
    RESULTS.mkdir(parents=True, exist_ok=True)

    from nanochat.sample_corpus import ensure_sample_corpus

    ensure_sample_corpus()
    fw = fineweb_like(mb)
    tok_dir = tokenizer_dir(args.vocab, fw, args.tokenizer)
    from nanochat.tokenizer import Tokenizer

    tok = Tokenizer.load(tok_dir)
    print(f"tokenizer: {tok_dir} (vocab {tok.vocab_size:,}); batch {args.batch_size} x {args.seq_len}, "
          f"buffer {args.buffer_docs} docs, {args.tokens:,} tokens per run, {reps} rep(s)")
    max_cores = len(os.sched_getaffinity(0))
    results = {}
    for data, data_dir in (("sample", ""), ("fineweb", str(fw))):
        for cores in (1, 2):
            if cores > max_cores:
                continue
            runs = [run_config(data, data_dir, cores, tok_dir, args) for _ in range(reps)]
            med = statistics.median(r["tok_s"] for r in runs)
            crop = runs[0]["cropped_fraction"]
            results[f"{data}_{cores}core"] = {"tok_s": med, "cropped_fraction": crop, "runs": runs}
            print(f"loader[{data}, {cores} core{'s' if cores > 1 else ''}, {cores} tokenizer thread"
                  f"{'s' if cores > 1 else ''}]: {med:,.0f} tok/s (target {TARGET}, ratio {med / TARGET:.2f}); "
                  f"cropped-token fraction {crop:.3f}; first batch {runs[0]['first_batch_s']:.2f} s", flush=True)
    (RESULTS / "loader_throughput.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
