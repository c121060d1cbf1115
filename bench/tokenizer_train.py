"""Benchmark: BPE tokenizer training, ours (nanochat_rustbpe) vs rustbpe vs HF tokenizers.

The corpus is built offline from the text files of the installed Python packages and the
standard library (.py/.md/.txt/.rst, documents capped at 10k characters, deterministic
selection), cached under bench/results/. Each trainer runs in its own subprocess so its wall
time and peak RSS are measured in isolation; repetitions are interleaved and the median is
reported. Compression (UTF-8 bytes per token) and encode throughput (tiktoken, single thread
and batched) are measured on held-out documents.

    python bench/tokenizer_train.py                 # 50 MB, vocab 32768, 3 reps
    python bench/tokenizer_train.py --quick         # small and fast
    python bench/tokenizer_train.py --mb 100 --vocab 65536 --reps 5
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import pickle
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

SEP = "\x1e"  # document separator in the cached corpus files (removed from documents)
DOC_CAP = 10_000
EXTENSIONS = (".py", ".md", ".txt", ".rst")
HELDOUT_EVERY = 40  # every 40th selected document is held out for compression/throughput
TRAINERS = ("ours", "rustbpe", "tokenizers")
RESULTS_DIR = Path(__file__).resolve().parent / "results"


# ----------------------------------------------------------------------------- corpus

def _candidate_files() -> list[tuple[str, Path]]:
    roots = []
    for key in ("stdlib", "purelib", "platlib"):
        p = sysconfig.get_paths().get(key)
        if p and Path(p).is_dir() and Path(p).resolve() not in [r.resolve() for _, r in roots]:
            roots.append((key, Path(p)))
    out = []
    for key, root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            for f in sorted(filenames):
                if f.endswith(EXTENSIONS):
                    full = Path(dirpath) / f
                    out.append((f"{key}/{full.relative_to(root).as_posix()}", full))
    out.sort()
    return out


def build_corpus(mb: float, cache_dir: Path) -> tuple[Path, Path]:
    """Write (train, heldout) corpus files with at least `mb` MB of training text; cached."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    tag = f"corpus_{mb:g}mb"
    train_path, held_path = cache_dir / f"{tag}.train.txt", cache_dir / f"{tag}.heldout.txt"
    if train_path.exists() and held_path.exists():
        return train_path, held_path
    target = int(mb * 1e6)
    files = _candidate_files()
    # Spread the selection over all packages: order by a hash of the relative path.
    files.sort(key=lambda kv: hashlib.sha1(kv[0].encode()).hexdigest())
    chosen, total = [], 0
    for rel, path in files:
        if total >= target * (1 + 1 / (HELDOUT_EVERY - 1)):
            break
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        text = text[:DOC_CAP].replace(SEP, " ")
        if not text.strip():
            continue
        chosen.append((rel, text))
        total += len(text.encode("utf-8"))
    chosen.sort()  # deterministic document order
    tmp_train, tmp_held = train_path.with_suffix(".tmp"), held_path.with_suffix(".tmp")
    with open(tmp_train, "w", encoding="utf-8") as ft, open(tmp_held, "w", encoding="utf-8") as fh:
        for i, (_, text) in enumerate(chosen):
            (fh if i % HELDOUT_EVERY == HELDOUT_EVERY - 1 else ft).write(text + SEP)
    os.replace(tmp_train, train_path)
    os.replace(tmp_held, held_path)
    return train_path, held_path


def iter_docs(path: Path, block: int = 1 << 16):
    """Stream documents from a corpus file without loading it whole."""
    rest = ""
    with open(path, encoding="utf-8", newline="") as f:
        while True:
            data = f.read(block)
            if not data:
                break
            parts = (rest + data).split(SEP)
            rest = parts.pop()
            yield from parts
    if rest:
        yield rest


# ----------------------------------------------------------------------------- workers

def _rss_mb() -> float:
    """Peak resident memory of this process so far, in MB."""
    try:  # Linux: high-water mark of this process image (not inherited from the parent)
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    import resource

    scale = 1024.0 * 1024.0 if sys.platform == "darwin" else 1024.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale


def _train_ours(corpus: Path, vocab: int, pattern: str):
    import nanochat_rustbpe

    ranks = nanochat_rustbpe.train_from_iterator(iter_docs(corpus), vocab, pattern=pattern)
    return {bytes(b): r for b, r in ranks}


def _train_rustbpe(corpus: Path, vocab: int, pattern: str):
    import rustbpe

    tok = rustbpe.Tokenizer()
    tok.train_from_iterator(iter_docs(corpus), vocab, pattern=pattern)
    return {bytes(b): r for b, r in tok.get_mergeable_ranks()}


def _train_tokenizers(corpus: Path, vocab: int, pattern: str):
    from tokenizers import Regex, Tokenizer, decoders, pre_tokenizers
    from tokenizers.models import BPE
    from tokenizers.trainers import BpeTrainer

    tok = Tokenizer(BPE(byte_fallback=True, unk_token=None, fuse_unk=False))
    tok.normalizer = None
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(pattern=Regex(pattern), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = BpeTrainer(vocab_size=vocab, show_progress=False, min_frequency=0,
                         initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=[])
    tok.train_from_iterator(iter_docs(corpus), trainer)
    # ByteLevel maps bytes to printable characters; invert that to get token bytes.
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    byte_of, n = {}, 0
    for b in range(256):
        if b in printable:
            byte_of[chr(b)] = b
        else:
            byte_of[chr(256 + n)] = b
            n += 1
    return {bytes(byte_of[ch] for ch in token): i for token, i in tok.get_vocab().items()}


def worker(name: str, corpus: Path, vocab: int, pattern: str, out: Path) -> None:
    fn = {"ours": _train_ours, "rustbpe": _train_rustbpe, "tokenizers": _train_tokenizers}[name]
    base = _rss_mb()
    t0 = time.perf_counter()
    ranks = fn(corpus, vocab, pattern)
    train_s = time.perf_counter() - t0
    peak = _rss_mb()
    with open(out, "wb") as f:
        pickle.dump({"train_s": train_s, "peak_rss_mb": peak, "base_rss_mb": base, "ranks": ranks}, f)


# ----------------------------------------------------------------------------- evaluation

def _to_encoding(name: str, ranks: dict[bytes, int], pattern: str):
    import tiktoken

    # tiktoken wants ranks 0..n-1; the HF vocab orders its 256 bytes differently, which is fine.
    return tiktoken.Encoding(name=f"bench_{name}", pat_str=pattern, mergeable_ranks=ranks, special_tokens={})


def evaluate(enc, heldout: list[str]) -> dict:
    n_bytes = sum(len(d.encode("utf-8")) for d in heldout)
    n_tokens = sum(len(x) for x in enc.encode_ordinary_batch(heldout, num_threads=os.cpu_count() or 1))
    single, batch = [], []
    for _ in range(3):
        t0 = time.perf_counter()
        for d in heldout:
            enc.encode_ordinary(d)
        single.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        enc.encode_ordinary_batch(heldout, num_threads=os.cpu_count() or 1)
        batch.append(time.perf_counter() - t0)
    return {
        "bytes_per_token": n_bytes / n_tokens,
        "encode_single_mb_s": n_bytes / 1e6 / min(single),
        "encode_batch_mb_s": n_bytes / 1e6 / min(batch),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mb", type=float, default=50.0, help="training text size in MB (default 50)")
    ap.add_argument("--vocab", type=int, default=32768, help="vocab size without special tokens (default 32768)")
    ap.add_argument("--reps", type=int, default=3, help="repetitions per trainer (median reported)")
    ap.add_argument("--quick", action="store_true", help="8 MB, vocab 8192, 1 rep")
    ap.add_argument("--only", default=",".join(TRAINERS), help="comma-separated subset of: " + ", ".join(TRAINERS))
    ap.add_argument("--late", action="store_true", help="use the late split pattern (numbers of up to 2 digits)")
    ap.add_argument("--cache-dir", type=Path, default=RESULTS_DIR)
    ap.add_argument("--worker", choices=TRAINERS, help=argparse.SUPPRESS)
    ap.add_argument("--corpus", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    import nanochat_rustbpe

    pattern = nanochat_rustbpe.GPT4_PATTERN_LATE if args.late else nanochat_rustbpe.GPT4_PATTERN
    if args.worker:
        worker(args.worker, args.corpus, args.vocab, pattern, args.out)
        return 0
    if args.quick:
        args.mb, args.vocab, args.reps = 8.0, 8192, 1
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    for n in names:
        if n not in TRAINERS:
            ap.error(f"unknown trainer {n!r}")

    t0 = time.perf_counter()
    train_path, held_path = build_corpus(args.mb, args.cache_dir)
    heldout = list(iter_docs(held_path))
    train_mb = train_path.stat().st_size / 1e6
    n_docs = sum(1 for _ in iter_docs(train_path))
    print(f"corpus: {train_mb:.1f} MB in {n_docs} documents (held-out {held_path.stat().st_size / 1e6:.1f} MB, "
          f"{len(heldout)} documents; ready in {time.perf_counter() - t0:.1f} s)")
    print(f"vocab {args.vocab}, reps {args.reps}, cpus {os.cpu_count()}, pattern {'late' if args.late else 'v0'}")

    runs: dict[str, list[dict]] = {n: [] for n in names}
    last_ranks: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.reps):
            for name in names:
                out = Path(tmp) / f"{name}.pkl"
                cmd = [sys.executable, os.path.abspath(__file__), "--worker", name, "--corpus", str(train_path),
                       "--vocab", str(args.vocab), "--out", str(out)] + (["--late"] if args.late else [])
                subprocess.run(cmd, check=True)
                with open(out, "rb") as f:
                    res = pickle.load(f)
                last_ranks[name] = res.pop("ranks")
                runs[name].append(res)
                print(f"  rep {rep + 1}: {name:10s} {res['train_s']:7.2f} s  peak RSS {res['peak_rss_mb']:7.1f} MB"
                      f"  (before training {res['base_rss_mb']:.1f} MB)", flush=True)

    summary = {}
    for name in names:
        enc = _to_encoding(name, last_ranks[name], pattern)
        summary[name] = {
            "train_s": statistics.median(r["train_s"] for r in runs[name]),
            "peak_rss_mb": statistics.median(r["peak_rss_mb"] for r in runs[name]),
            "base_rss_mb": statistics.median(r["base_rss_mb"] for r in runs[name]),
            "train_s_all": [r["train_s"] for r in runs[name]],
            "vocab": len(last_ranks[name]),
            **evaluate(enc, heldout),
        }
    if "ours" in last_ranks and "rustbpe" in last_ranks:
        same = sorted(last_ranks["ours"].items(), key=lambda kv: kv[1]) == sorted(
            last_ranks["rustbpe"].items(), key=lambda kv: kv[1])
        print(f"merges identical to rustbpe: {same}")

    def line(metric, key, unit, fmt="{:.2f}"):
        if "ours" not in summary:
            return
        ours = summary["ours"][key]
        for peer in names:
            if peer == "ours":
                continue
            other = summary[peer][key]
            print(f"{metric}: ours {fmt.format(ours)} {unit}, {peer} {fmt.format(other)} {unit}, ratio {ours / other:.3f}")

    line("train_time", "train_s", "s")
    line("peak_rss", "peak_rss_mb", "MB", "{:.1f}")
    line("compression", "bytes_per_token", "bytes/token", "{:.4f}")
    line("encode_single", "encode_single_mb_s", "MB/s")
    line("encode_batch", "encode_batch_mb_s", "MB/s")
    if "ours" not in summary:
        for name, s in summary.items():
            print(f"{name}: train {s['train_s']:.2f} s, peak RSS {s['peak_rss_mb']:.1f} MB, "
                  f"{s['bytes_per_token']:.4f} bytes/token")
    try:
        from nanochat.tokenizer import reference_encodings

        for ref_name, enc in reference_encodings().items():
            r = evaluate(enc, heldout)
            print(f"reference {ref_name}: {r['bytes_per_token']:.4f} bytes/token, "
                  f"encode {r['encode_single_mb_s']:.2f} MB/s single, {r['encode_batch_mb_s']:.2f} MB/s batch")
    except ImportError:
        pass
    args.cache_dir.mkdir(parents=True, exist_ok=True)
    out = args.cache_dir / "tokenizer_train.json"
    out.write_text(json.dumps({"mb": args.mb, "vocab": args.vocab, "reps": args.reps, "late": args.late,
                               "cpus": os.cpu_count(), "results": summary}, indent=2))
    print(f"results written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
