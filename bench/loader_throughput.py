"""Benchmark: PackingLoader throughput (tokens/s) per packing strategy, against a literal reference loader.

Two document sets:
  * sample   - the embedded offline corpus (Python standard library docstrings/comments)
  * fineweb  - a generated FineWeb-like parquet set: documents repackaged from the installed packages' docstrings
               and text files, written as shards with row groups of 1024 documents and a `text` column
The tokenizer is a nanochat BPE tokenizer of vocab 32,768 (``--vocab``) trained here on the FineWeb-like set
(cached under bench/results/, keyed by vocab and set size); ``--tokenizer DIR`` uses a saved one instead.

Per packing (bestfit, cropfit, concat): "ours" is `PackingLoader`; "peer" is the reference nanochat's loader
written out literally in this file (parquet files in order, row groups strided by rank, 128-document tokenizer
batches; best fit by linear scans of a 1000-document list, or the v0 token deque) - the peer of cropfit is the
reference best fit it stands in for. Each run is its own subprocess pinned to N cores (``os.sched_setaffinity``),
``torch.set_num_threads(N)``, N tokenizer threads. The clock starts before the loader is built, so filling the
packing buffer counts; every batch handed out counts (tok/s = B*T per batch / wall time), and the tokenized
tokens per second are reported too. Median of the repetitions. The first batches of ours and the peer are
compared token for token (bestfit and concat must be identical).

    python bench/loader_throughput.py            # ~30 MB fineweb-like set, 3 repetitions
    python bench/loader_throughput.py --quick    # smaller, 1 repetition
"""
from __future__ import annotations

import argparse
import hashlib
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
    """The given saved tokenizer, or one of `vocab` tokens trained here on the FineWeb-like set (cached)."""
    from nanochat.tokenizer import Tokenizer

    if explicit:
        return explicit
    out = RESULTS / f"loader_tokenizer_{vocab}_{train_dir.name}"
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


# ----------------------------------------------------------------------------------------------- peer


def peer_batches(files: list[Path], tok, B: int, T: int, packing: str, threads: int, buffer_size: int = 1000,
                 tokenizer_batch_size: int = 128):
    """The reference loader, literally: endless (inputs, targets) lists for rank 0 of 1."""
    import pyarrow.parquet as pq

    bos = tok.bos_token_id

    def doc_batches():
        while True:
            for path in files:
                pf = pq.ParquetFile(path)
                for rg in range(pf.num_row_groups):
                    texts = pf.read_row_group(rg, columns=["text"]).column("text").to_pylist()
                    for i in range(0, len(texts), tokenizer_batch_size):
                        yield texts[i: i + tokenizer_batch_size]

    batches = doc_batches()
    if packing == "concat":  # v0: a token deque, B*T+1 tokens popped per batch
        from collections import deque

        buf: deque = deque()
        while True:
            while len(buf) < B * T + 1:
                for ids in tok.encode(next(batches), prepend=bos, num_threads=threads):
                    buf.extend(ids)
            w = [buf.popleft() for _ in range(B * T + 1)]
            yield [w[k * T: (k + 1) * T] for k in range(B)], [w[k * T + 1: (k + 1) * T + 1] for k in range(B)]
    docs: list[list[int]] = []
    while True:
        rows = []
        for _ in range(B):
            row: list[int] = []
            while len(row) < T + 1:
                while len(docs) < buffer_size:
                    docs.extend(tok.encode(next(batches), prepend=bos, num_threads=threads))
                room = T + 1 - len(row)
                best, best_len = -1, 0
                for i, d in enumerate(docs):
                    if best_len < len(d) <= room:
                        best, best_len = i, len(d)
                if best >= 0:
                    row.extend(docs.pop(best))
                else:
                    k = min(range(len(docs)), key=lambda i: len(docs[i]))
                    row.extend(docs.pop(k)[:room])
            rows.append(row)
        yield [r[:-1] for r in rows], [r[1:] for r in rows]


# ----------------------------------------------------------------------------------------------- worker


def _digest(h, inputs, targets) -> None:
    import torch

    h.update(torch.as_tensor(inputs, dtype=torch.long).numpy().tobytes())
    h.update(torch.as_tensor(targets, dtype=torch.long).numpy().tobytes())


def worker(args: argparse.Namespace) -> None:
    cores = sorted(os.sched_getaffinity(0))[: args.cores]
    os.sched_setaffinity(0, set(cores))
    import torch

    torch.set_num_threads(args.cores)
    from nanochat.dataloader import PackingLoader
    from nanochat.dataset import get_source
    from nanochat.tokenizer import Tokenizer

    tok = Tokenizer.load(args.tokenizer_dir)
    source = get_source("sample") if args.data == "sample" else get_source("local", path=args.data_dir,
                                                                             val_fraction=0.05)
    per_batch = args.batch_size * args.seq_len
    n = max(2, -(-args.tokens // per_batch))
    check = hashlib.sha1()
    t0 = time.perf_counter()
    if args.impl == "ours":
        loader = PackingLoader(source, tok, args.batch_size, args.seq_len, buffer_docs=args.buffer_docs,
                               tokenizer_threads=args.cores, packing=args.packing)
        it = iter(loader)
    else:
        peer_packing = "bestfit" if args.packing == "cropfit" else args.packing
        it = peer_batches(source.files("train"), tok, args.batch_size, args.seq_len, peer_packing, args.cores,
                          buffer_size=args.buffer_docs)
    first = None
    for k in range(n):
        inputs, targets = next(it)
        if k < 4:
            _digest(check, inputs, targets)
        if first is None:
            first = time.perf_counter() - t0
    dt = time.perf_counter() - t0
    out = {"tok_s": n * per_batch / dt, "first_batch_s": first, "digest": check.hexdigest(), "cores": cores}
    if args.impl == "ours":
        it.close()
        stats = loader.stats
        out.update(tokenized_tok_s=stats["tokens_read"] / dt, cropped_fraction=stats["cropped_fraction"],
                   epochs=stats["epoch"])
    print(json.dumps(out))


def run_config(impl: str, packing: str, data: str, data_dir: str, cores: int, tok_dir: str,
               opts: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--worker", "--impl", impl, "--packing", packing, "--data", data,
           "--data-dir", data_dir, "--cores", str(cores), "--tokenizer-dir", tok_dir, "--tokens", str(opts.tokens),
           "--batch-size", str(opts.batch_size), "--seq-len", str(opts.seq_len), "--buffer-docs",
           str(opts.buffer_docs)]
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
    ap.add_argument("--tokenizer", default=None, help="a saved nanochat tokenizer folder (default: train one)")
    ap.add_argument("--tokens", type=int, default=None, help="tokens handed out per run")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=2048)
    ap.add_argument("--buffer-docs", type=int, default=1000)
    ap.add_argument("--packings", default="bestfit,cropfit,concat")
    ap.add_argument("--core-counts", default="1,2")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--impl", default="ours", help=argparse.SUPPRESS)
    ap.add_argument("--packing", default="bestfit", help=argparse.SUPPRESS)
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
          f"buffer {args.buffer_docs} docs, {args.tokens:,} tokens per run, {reps} rep(s)", flush=True)
    max_cores = len(os.sched_getaffinity(0))
    results = {}
    for data, data_dir in (("sample", ""), ("fineweb", str(fw))):
        for cores in [int(c) for c in args.core_counts.split(",") if int(c) <= max_cores]:
            for packing in args.packings.split(","):
                runs: dict[str, list[dict]] = {"ours": [], "peer": []}
                for _ in range(reps):  # interleaved, so load changes hit both alike
                    for impl in ("ours", "peer"):
                        runs[impl].append(run_config(impl, packing, data, data_dir, cores, tok_dir, args))
                ours = statistics.median(r["tok_s"] for r in runs["ours"])
                peer = statistics.median(r["tok_s"] for r in runs["peer"])
                tokenized = statistics.median(r["tokenized_tok_s"] for r in runs["ours"])
                crop = runs["ours"][0]["cropped_fraction"]
                same = runs["ours"][0]["digest"] == runs["peer"][0]["digest"]
                name = f"loader_{packing}_{data}_{cores}core"
                results[name] = {"ours_tok_s": ours, "peer_tok_s": peer, "tokenized_tok_s": tokenized,
                                 "cropped_fraction": crop, "same_batches_as_peer": same, "runs": runs}
                print(f"{name}: ours {ours:,.0f}, peer {peer:,.0f}, ratio {ours / peer:.2f} (tok/s; ours tokenizes "
                      f"{tokenized:,.0f} tok/s; cropped-token fraction {crop:.3f}; first 4 batches "
                      f"{'identical to' if same else 'differ from'} the peer's)", flush=True)
    (RESULTS / "loader_throughput.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
