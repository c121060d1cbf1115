"""Side-by-side parity of our `jul2026` preset with the reference nanochat (karpathy/nanochat at 92d63d4) on CPU.

The one idea: both sides read the *same* parquet shards (column ``text``, the last shard is validation) with the
*same* tokenizer (trained once by the reference's ``scripts/tok_train.py``, converted to our format), and train
the same d4 model for the same steps and batch; each side is run unmodified (the reference's
``scripts/base_train.py``, our ``train.py stage=base``) in a child process that only adds observation hooks (dump
the weights right after initialisation, record the raw training loss of every step, set the seed). Runs
alternate reference / ours so that the shared machine's load falls on both alike.

    python bench/parity.py --ref /path/to/nanochat-92d63d4 [--work DIR] [--seeds 1 2 3] [--steps 100]
    python bench/parity.py --ref ... presets [--depths 4 6]      # ours: jul2026 vs jan2026 at equal FLOPs

Needs ../shared/data (or $NANOCHAT_SHARED_DATA) for the text, and the reference's dependencies importable by this
Python (torch, tiktoken, rustbpe, pyarrow, wandb, filelock). Results land in DIR/runs/*.json and are reused on a
second call, so an interrupted comparison continues; figures and commands are recorded in docs/parity.md.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("NANOCHAT_SHARED_DATA", ROOT.parent / "shared" / "data"))
VOCAB = 4096          # a multiple of 64: the reference pads its embedding to one, we do not
ROW_GROUP = 1024      # rows per parquet row group, as the reference's ClimbMix shards
N_TRAIN_SHARDS = 4
SEQ, ROWS, BATCH = 512, 8, 4096   # context, rows per micro-batch, tokens per step (no accumulation)
EVAL_TOKENS = 65536   # 16 validation batches of 8 x 512 on both sides


# ---------------------------------------------------------------------------------------------------- data


def _documents() -> list[str]:
    """Every local document: Shakespeare (speeches grouped to 0.5-5k characters), GSM8K problems, LAMBADA and
    BoolQ passages, and our embedded Python-documentation sample; shuffled with a fixed seed."""
    import pyarrow.parquet as pq

    from nanochat.sample_corpus import ensure_sample_corpus, read_manifest

    rng = random.Random(0)
    docs: list[str] = []
    speeches = (SHARED / "text" / "tinyshakespeare.txt").read_text().split("\n\n")
    cur, target = [], rng.randint(500, 5000)
    for s in speeches:
        cur.append(s)
        if sum(len(c) for c in cur) >= target:
            docs.append("\n\n".join(cur))
            cur, target = [], rng.randint(500, 5000)
    docs += ["\n\n".join(cur)] if cur else []
    for split in ("train", "test"):
        for line in (SHARED / "gsm8k" / f"{split}.jsonl").read_text().splitlines():
            row = json.loads(line)
            docs.append(f"{row['question']}\n{row['answer']}")
    for name, key in (("lambada_openai", None), ("boolq", "query")):
        for line in (SHARED / "core_eval" / "eval_data" / f"{name}.jsonl").read_text().splitlines():
            row = json.loads(line)
            docs.append(row[key] if key else f"{row['context']} {row['continuation']}")
    folder = ensure_sample_corpus()
    for f in read_manifest(folder)["files"]:
        docs += [t for t in pq.read_table(folder / f, columns=["text"]).column("text").to_pylist() if t]
    rng.shuffle(docs)
    return docs


def prepare(work: Path, ref: Path) -> None:
    """Write work/data/shard_*.parquet (last = validation) and one tokenizer in both formats (work/ref_base/tokenizer
    for the reference, work/tokenizer for us); nothing is redone when it exists."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    data = work / "data"
    if not (data / "done").exists():
        data.mkdir(parents=True, exist_ok=True)
        docs = _documents()
        n_val = 4000
        train, val = docs[:-n_val], docs[-n_val:]
        per = -(-len(train) // N_TRAIN_SHARDS)
        parts = [train[i * per:(i + 1) * per] for i in range(N_TRAIN_SHARDS)] + [val]
        for i, part in enumerate(parts):
            pq.write_table(pa.table({"text": part}), data / f"shard_{i:05d}.parquet", row_group_size=ROW_GROUP)
        (data / "done").write_text(json.dumps({"train_docs": len(train), "val_docs": len(val),
                                               "chars": sum(map(len, docs))}))
    base = work / "ref_base"
    (base / "base_data_climbmix").mkdir(parents=True, exist_ok=True)
    for f in sorted(data.glob("shard_*.parquet")):
        link = base / "base_data_climbmix" / f.name
        if not link.exists():
            link.symlink_to(f)
    if not (base / "tokenizer" / "token_bytes.pt").exists():
        subprocess.run([sys.executable, "-m", "scripts.tok_train", f"--vocab-size={VOCAB}"], cwd=ref, check=True,
                       env=ref_env(ref, base), stdout=subprocess.DEVNULL)
    ours = work / "tokenizer"
    if not (ours / "tokenizer.pkl").exists():
        import pickle

        from nanochat.tokenizer import Tokenizer

        with open(base / "tokenizer" / "tokenizer.pkl", "rb") as f:
            enc = pickle.load(f)  # the reference stores a pickled tiktoken.Encoding (our own file, trusted)
        Tokenizer(enc._mergeable_ranks, enc._pat_str).save(ours)
    check_tokenizers(work)


def check_tokenizers(work: Path) -> dict:
    """Both tokenizers give identical ids on the validation shard, the same BOS id and vocabulary size."""
    import pickle

    import pyarrow.parquet as pq

    from nanochat.tokenizer import Tokenizer

    with open(work / "ref_base" / "tokenizer" / "tokenizer.pkl", "rb") as f:
        enc = pickle.load(f)
    ours = Tokenizer.load(work / "tokenizer")
    val = sorted((work / "data").glob("shard_*.parquet"))[-1]
    texts = pq.read_table(val).column("text").to_pylist()
    same = enc.encode_ordinary_batch(texts) == ours.encode(texts)
    assert same and enc.n_vocab == ours.vocab_size and enc.encode_single_token("<|bos|>") == ours.bos_token_id, \
        "the two tokenizers differ"
    return {"vocab": ours.vocab_size, "val_docs": len(texts)}


def ref_env(ref: Path, base: Path) -> dict:
    return {**os.environ, "NANOCHAT_BASE_DIR": str(base), "PYTHONPATH": str(ref), "WANDB_MODE": "disabled",
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(os.cpu_count() or 1))}


# ---------------------------------------------------------------------------------------------------- workers
# A worker is this file run again in a child process: it adds observation hooks, then runs one side unmodified.


def _dump_init(gpt_cls, init_path: str) -> None:
    """Save the first model's state dict right after its `init_weights` (the draws of the seed)."""
    import torch

    init = gpt_cls.init_weights

    def init_and_dump(self, *a, **k):
        out = init(self, *a, **k)
        if not os.path.exists(init_path):
            torch.save({n: t.detach().clone() for n, t in self.state_dict().items()}, init_path)
        return out

    gpt_cls.init_weights = init_and_dump


def ref_batches_worker(args, rest: list[str]) -> None:
    """The reference's own loaders: the first `n` training batches and `v` validation batches, saved stacked."""
    import torch

    sys.path.insert(0, os.getcwd())
    from nanochat.dataloader import tokenizing_distributed_data_loader_bos_bestfit as loader
    from nanochat.tokenizer import get_tokenizer

    n, v = int(rest[0]), int(rest[1])
    tok = get_tokenizer()
    out = {}
    for split, k in (("train", n), ("val", v)):
        it = loader(tok, ROWS, SEQ, split=split, device="cpu")
        out[split] = torch.stack([torch.cat([x.clone(), y[:, -1:].clone()], 1) for x, y in (next(it) for _ in range(k))])
    torch.save(out, args.init_out)


def compare_batches(work: Path, ref: Path, n: int, v: int = EVAL_TOKENS // BATCH) -> dict:
    """Our loader (bestfit, the reference's buffer) against the reference's: the first n training batches and the
    validation batches of one evaluation, token for token."""
    import torch

    from nanochat.dataloader import PackingLoader, val_loader
    from nanochat.dataset import get_source
    from nanochat.tokenizer import Tokenizer

    path = work / "runs" / f"batches_{n}_{v}.pt"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker", "refdata", "--init-out", str(path),
                        "--", str(n), str(v)], cwd=ref, env=ref_env(ref, work / "ref_base"), check=True,
                       capture_output=True)
    theirs = torch.load(path)
    tok = Tokenizer.load(work / "tokenizer")
    src = get_source("local", path=str(work / "data"), val_file="shard_%05d.parquet" % N_TRAIN_SHARDS)
    it = iter(PackingLoader(src, tok, ROWS, SEQ, split="train", packing="bestfit"))
    train = torch.stack([torch.cat([x, y[:, -1:]], 1) for x, y in (next(it) for _ in range(n))])
    val = torch.stack([torch.cat([x, y[:, -1:]], 1) for x, y in val_loader(src, tok, ROWS, SEQ, steps=v)])
    # bits per byte: the reference counts a token's raw bytes (tok_train.py), our runner its decoded text's UTF-8
    # bytes; on the same targets the two byte totals convert one bpb into the other exactly
    targets = theirs["val"][:, :, 1:]
    decoded, raw = (int(tok.token_bytes(kind)[targets].sum()) for kind in ("decoded", "raw"))
    return {"train_batches_equal": int((train == theirs["train"]).flatten(1).all(1).sum()), "train_batches": n,
            "val_batches_equal": int((val == theirs["val"]).flatten(1).all(1).sum()), "val_batches": v,
            "val_bytes_decoded": decoded, "val_bytes_raw": raw}


def ref_worker(args, rest: list[str]) -> None:
    """The reference's scripts/base_train.py with hooks: seed (its compute_init fixes manual_seed(42)), init dump,
    raw loss per step; --no-compile replaces torch.compile by the identity."""
    import runpy

    import torch

    sys.path.insert(0, os.getcwd())
    import nanochat.common as common
    import nanochat.gpt as gpt

    losses: list[float] = []
    compute_init = common.compute_init

    def seeded(*a, **k):
        out = compute_init(*a, **k)
        torch.manual_seed(args.seed)
        return out

    common.compute_init = seeded
    _dump_init(gpt.GPT, args.init_out)
    compile_ = torch.compile

    def compile_and_record(model, **k):
        # the hook sits on the module base_train calls (outside any compiled graph): a training forward with
        # targets returns the step's mean loss
        out = model if args.no_compile else compile_(model, **k)
        out.register_forward_hook(lambda m, a, y: losses.append(float(y)) if m.training and y.ndim == 0 else None)
        return out

    torch.compile = compile_and_record
    sys.argv = ["base_train", *rest]
    try:
        runpy.run_module("scripts.base_train", run_name="__main__")
    finally:
        Path(args.loss_out).write_text(json.dumps(losses))


def ours_worker(args, rest: list[str]) -> None:
    """Our `train.py` (the product path) with the init dump; the seed is its own `seed=`, the per-step loss and
    tok/s come from its logs/metrics.csv."""
    import runpy

    import nanochat.gpt as gpt

    _dump_init(gpt.GPT, args.init_out)
    sys.argv = [str(ROOT / "train.py"), *rest]
    runpy.run_path(str(ROOT / "train.py"), run_name="__main__")


# ---------------------------------------------------------------------------------------------------- runs



def _worker(side: str, out: Path, seed: int, extra: list[str], cwd: Path, env: dict | None = None,
            no_compile: bool = False) -> tuple[str, float]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", side, "--seed", str(seed),
           "--init-out", str(out / "init.pt"), "--loss-out", str(out / "losses.json"),
           *(["--no-compile"] if no_compile else []), "--", *extra]
    env = {**(env or os.environ), "PYTHONUNBUFFERED": "1"}
    t0 = time.time()
    with open(out / "stdout.txt", "w") as so, open(out / "stderr.txt", "w") as se:  # readable while it runs
        code = subprocess.run(cmd, cwd=cwd, env=env, stdout=so, stderr=se).returncode
    if code != 0:
        sys.exit(f"{side} run in {out} failed:\n{(out / 'stderr.txt').read_text()[-3000:]}")
    return (out / "stdout.txt").read_text(), time.time() - t0


def _cached(out: Path) -> dict | None:
    """A finished run's result; if another process of this harness is running it, wait for it; else claim it."""
    while True:
        if (out / "result.json").exists():
            return json.loads((out / "result.json").read_text())
        owner = out / "owner.pid"
        try:
            pid = int(owner.read_text())
            os.kill(pid, 0)
            if pid != os.getpid():
                time.sleep(20)
                continue
        except (OSError, ValueError):
            pass
        out.mkdir(parents=True, exist_ok=True)
        owner.write_text(str(os.getpid()))
        return None


def run_ref(work: Path, ref: Path, name: str, seed: int, depth: int, steps: int, compile: bool = True) -> dict:
    out = work / "runs" / name
    if (done := _cached(out)) is not None:
        return done
    for f in ("init.pt", "losses.json"):
        (out / f).unlink(missing_ok=True)
    argv = ["--device-type=cpu", f"--depth={depth}", "--aspect-ratio=64", "--head-dim=64", f"--max-seq-len={SEQ}",
            f"--device-batch-size={ROWS}", f"--total-batch-size={BATCH}", f"--num-iterations={steps}",
            f"--eval-every={steps}", f"--eval-tokens={EVAL_TOKENS}", "--core-metric-every=-1", "--sample-every=-1",
            f"--model-tag={name}"]
    stdout, wall = _worker("ref", out, seed, argv, ref, ref_env(ref, work / "ref_base"), no_compile=not compile)
    dts = {int(m[1]): float(m[2]) / 1000 for m in re.finditer(r"^step (\d+)/\d+ .*?\| dt: ([\d.]+)ms", stdout, re.M)}
    bpb = {int(m[1]): float(m[2]) for m in re.finditer(r"^Step (\d+) \| Validation bpb: ([\d.]+)", stdout, re.M)}
    res = {"side": "ref", "name": name, "seed": seed, "depth": depth, "steps": steps, "compile": compile,
           "losses": json.loads((out / "losses.json").read_text()), "step_s": [dts[i] for i in sorted(dts)],
           "val_bpb": bpb.get(steps), "val_bpb_init": bpb.get(0), "wall_s": wall}
    return _finish(out, res)


def run_ours(work: Path, name: str, seed: int, depth: int, steps: int, preset: str = "jul2026",
             compile: bool = False, extra: tuple[str, ...] = ()) -> dict:
    import csv

    out = work / "runs" / name
    if (done := _cached(out)) is not None:
        return done
    (out / "init.pt").unlink(missing_ok=True)
    run_dir = out / "run"
    argv = ["stage=base", "hardware=cpu", f"model.preset={preset}", f"model.depth={depth}", "model.aspect_ratio=64",
            "model.head_dim=64", f"model.sequence_len={SEQ}", "data=local", f"data.path={work / 'data'}",
            "data.val_file=shard_%05d.parquet" % N_TRAIN_SHARDS, "data.loader.packing=bestfit",
            f"tokenizer_dir={work / 'tokenizer'}", f"hardware.device_batch_size={ROWS}",
            f"stage.total_batch_tokens={BATCH}", f"stage.eval_tokens={EVAL_TOKENS}",
            *([f"stage.num_iterations={steps}", f"stage.eval_every={steps}"] if steps else ["stage.num_iterations=-1", "stage.eval_every=-1"]), "stage.sample_every=0", f"seed={seed}", f"run_name={name}",
            f"hydra.run.dir={run_dir}", "logger=csv", f"hardware.compile={str(compile).lower()}", *extra]
    if (run_dir / "summary.json").exists():  # finished, but its result was never collected
        wall = json.loads((run_dir / "summary.json").read_text())["fit_seconds"]
    else:
        _, wall = _worker("ours", out, seed, argv, ROOT)
    rows = list(csv.DictReader(open(run_dir / "logs" / "metrics.csv")))
    loss = {int(r["step"]): float(r["train/loss"]) for r in rows if r.get("train/loss")}
    step_s = {int(r["step"]): float(r["perf/step_s"]) for r in rows if r.get("perf/step_s")}
    summary = json.loads((run_dir / "summary.json").read_text())
    res = {"side": "ours", "name": name, "seed": seed, "depth": depth, "steps": steps, "preset": preset,
           "compile": compile, "losses": [loss[i] for i in sorted(loss)], "step_s": [step_s[i] for i in sorted(step_s)],
           "val_bpb": summary["val_bpb"], "wall_s": wall, "flops_per_token": summary["plan"].get("flops_per_token"),
           "bpb_bytes": _bpb_bytes(run_dir)}
    return _finish(out, res)


def _bpb_bytes(run_dir: Path) -> str:
    """How our run counted a token's bytes: its preset's rule (jul2026: raw, as the reference), else decoded."""
    from nanochat.evaluation import bpb_bytes_kind

    return bpb_bytes_kind(run_dir / "model")


def _finish(out: Path, res: dict) -> dict:
    steady = res["step_s"][10:] or res["step_s"][1:]
    res["tok_s"] = BATCH / statistics.median(steady) if steady else None
    (out / "result.json").write_text(json.dumps(res, indent=1))
    return res


# ---------------------------------------------------------------------------------------------------- comparisons


def compare_init(a: Path, b: Path) -> dict:
    """Tensor by tensor: names only one side has, and the largest difference of each shared tensor."""
    import torch

    ref, ours = torch.load(a), torch.load(b)
    diffs = {}
    for n in sorted(set(ref) & set(ours)):
        x, y = ref[n].float(), ours[n].float()
        diffs[n] = "shape %s vs %s" % (tuple(x.shape), tuple(y.shape)) if x.shape != y.shape else \
            float((x - y).abs().max())
    return {"only_ref": sorted(set(ref) - set(ours)), "only_ours": sorted(set(ours) - set(ref)),
            "identical": sum(1 for v in diffs.values() if v == 0.0), "shared": len(diffs),
            "differ": {n: v for n, v in diffs.items() if v != 0.0}}


def parity(work: Path, ref: Path, seeds: list[int], steps: int, compile_ours: bool = False,
           eager: bool = True) -> dict:
    """Reference and ours, alternating, one seed after another; prints and returns the comparison."""
    pairs = []
    for seed in seeds:
        r = run_ref(work, ref, f"ref_d4_n{steps}_s{seed}", seed, 4, steps)
        o = run_ours(work, f"ours_d4_n{steps}_s{seed}" + ("_c" if compile_ours else ""), seed, 4, steps,
                     compile=compile_ours)
        pairs.append((r, o))
    data = compare_batches(work, ref, steps)
    to_raw = data["val_bytes_decoded"] / data["val_bytes_raw"]  # a decoded-bytes bpb -> the reference's definition

    def raw_bpb(run: dict) -> float:  # older runs (decoded bytes) record no "bpb_bytes"
        return run["val_bpb"] * (1.0 if run.get("bpb_bytes") == "raw" else to_raw)

    print(f"data: {data['train_batches_equal']}/{steps} training and {data['val_batches_equal']}/"
          f"{data['val_batches']} validation batches identical; bytes decoded/raw {to_raw:.6f}")
    rows = []
    for r, o in pairs:
        init = compare_init(work / "runs" / r["name"] / "init.pt", work / "runs" / o["name"] / "init.pt")
        n = min(len(r["losses"]), len(o["losses"]))
        d = [abs(x - y) for x, y in zip(r["losses"][:n], o["losses"][:n])]
        rows.append({"seed": r["seed"], "init_identical": f"{init['identical']}/{init['shared']}",
                     "init_only_ref": init["only_ref"], "init_only_ours": init["only_ours"],
                     "init_differ": init["differ"], "loss_diff_step0": d[0], "loss_diff_step1": d[1],
                     "loss_diff_step10": d[10] if n > 10 else None, "loss_diff_max": max(d),
                     "loss_ref_last": r["losses"][n - 1], "loss_ours_last": o["losses"][n - 1],
                     "val_bpb_ref": r["val_bpb"], "val_bpb_ours": raw_bpb(o),
                     "val_bpb_ours_decoded": o["val_bpb"],
                     "tok_s_ref": r["tok_s"], "tok_s_ours": o["tok_s"]})
    mean = lambda k: statistics.mean(x[k] for x in rows)  # noqa: E731
    med = lambda k: statistics.median(x[k] for x in rows)  # noqa: E731
    out = {"data": data, "rows": rows, "val_bpb_ref_mean": mean("val_bpb_ref"), "val_bpb_ours_mean": mean("val_bpb_ours"),
           "tok_s_ref_median": med("tok_s_ref"), "tok_s_ours_median": med("tok_s_ours")}
    out["val_bpb_diff"] = out["val_bpb_ours_mean"] - out["val_bpb_ref_mean"]
    out["tok_s_ratio"] = out["tok_s_ours_median"] / out["tok_s_ref_median"]
    print(f"{'seed':>5} {'init equal':>10} {'dloss@0':>9} {'dloss@1':>9} {'dloss@10':>9} {'max dloss':>9} "
          f"{'bpb ref':>8} {'bpb ours':>8} {'tok/s ref':>9} {'tok/s ours':>10}")
    for x in rows:
        print(f"{x['seed']:>5} {x['init_identical']:>10} {x['loss_diff_step0']:9.2e} {x['loss_diff_step1']:9.2e} "
              f"{float('nan') if x['loss_diff_step10'] is None else x['loss_diff_step10']:9.2e} {x['loss_diff_max']:9.2e} {x['val_bpb_ref']:8.4f} "
              f"{x['val_bpb_ours']:8.4f} {x['tok_s_ref']:9.0f} {x['tok_s_ours']:10.0f}")
        if x["init_only_ref"] or x["init_only_ours"] or x["init_differ"]:
            print(f"      init: only ref {x['init_only_ref']}, only ours {x['init_only_ours']}, "
                  f"differ {x['init_differ']}")
    print("(bpb ours: converted to the reference's raw-bytes definition)")
    print(f"val bpb mean: ref {out['val_bpb_ref_mean']:.4f}, ours {out['val_bpb_ours_mean']:.4f} "
          f"(diff {out['val_bpb_diff']:+.4f}); tok/s median: ref {out['tok_s_ref_median']:.0f}, "
          f"ours {out['tok_s_ours_median']:.0f} (x{out['tok_s_ratio']:.3f})")
    if eager:  # the reference without torch.compile: the same float operations as ours, step for step
        e, o = run_ref(work, ref, f"refnc_d4_n{steps}_s{seeds[0]}", seeds[0], 4, steps, compile=False), pairs[0][1]
        d = [abs(x - y) for x, y in zip(e["losses"], o["losses"])]
        first = next((i for i, x in enumerate(d) if x > 1e-4), None)
        out["eager"] = {"seed": seeds[0], "loss_diff_max": max(d), "first_step_over_1e-4": first,
                        "val_bpb_ref_eager": e["val_bpb"], "val_bpb_ours": raw_bpb(o),
                        "tok_s_ref_eager": e["tok_s"]}
        print(f"reference without compile, seed {seeds[0]}: max |loss diff| over {len(d)} steps {max(d):.2e} "
              f"(first step over 1e-4: {first}), val bpb {e['val_bpb']:.4f} vs ours {raw_bpb(o):.4f}, "
              f"tok/s {e['tok_s']:.0f}")
    (work / "parity.json").write_text(json.dumps(out, indent=1))
    return out


def presets(work: Path, seeds: list[int], depths: list[int], steps: int,
            names: tuple[str, ...] = ("jan2026", "jul2026")) -> dict:
    """Ours, jul2026 vs jan2026 at equal FLOPs per depth: the budget is jan2026's FLOPs for `steps` steps at that
    depth (seed 1's run), and every other run derives its step count from it (stage.target_flops)."""
    out: dict = {}
    for depth in depths:
        first = run_ours(work, f"jan2026_d{depth}_s{seeds[0]}", seeds[0], depth, steps, preset="jan2026")
        budget = first["flops_per_token"] * BATCH * steps
        for seed in seeds:
            for preset in names:
                r = run_ours(work, f"{preset}_d{depth}_s{seed}", seed, depth, None, preset=preset,
                             extra=(f"stage.target_flops={budget:.6e}",))
                out.setdefault(f"d{depth}", {}).setdefault(preset, []).append((r["val_bpb"], len(r["losses"])))
        if len(out[f"d{depth}"]) == 2:
            jan, jul = (statistics.mean(b for b, _ in out[f"d{depth}"][p]) for p in ("jan2026", "jul2026"))
            print(f"d{depth}: {budget:.3e} FLOPs; (val bpb, steps) jan2026 {out[f'd{depth}']['jan2026']} "
                  f"mean {jan:.4f}; jul2026 {out[f'd{depth}']['jul2026']} mean {jul:.4f}; jul - jan {jul - jan:+.4f}")
    (work / "presets.json").write_text(json.dumps(out, indent=1))
    return out


def main() -> None:
    if sys.argv[1:2] == ["--worker"]:  # a child: `--worker SIDE [options] -- <the side's own arguments>`
        split = sys.argv.index("--")
        wp = argparse.ArgumentParser()
        wp.add_argument("--worker", choices=["ref", "ours", "refdata"])
        wp.add_argument("--seed", type=int, default=42)
        wp.add_argument("--init-out")
        wp.add_argument("--loss-out")
        wp.add_argument("--no-compile", action="store_true")
        args = wp.parse_args(sys.argv[1:split])
        workers = {"ref": ref_worker, "ours": ours_worker, "refdata": ref_batches_worker}
        return workers[args.worker](args, sys.argv[split + 1:])
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("what", nargs="?", default="parity", choices=["parity", "presets", "prepare"])
    ap.add_argument("--ref", type=Path, help="a checkout/export of the reference (92d63d4)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/nanochat-parity"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--depths", type=int, nargs="+", default=[4, 6])
    ap.add_argument("--no-eager", action="store_true", help="skip the reference run without torch.compile")
    ap.add_argument("--compile-ours", action="store_true", help="our side with hardware.compile=true")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    if args.ref is None or not (args.ref / "scripts" / "base_train.py").exists():
        sys.exit("--ref: give the folder of the reference nanochat (git archive 92d63d4)")
    if not SHARED.exists():
        sys.exit(f"no shared data at {SHARED} (set NANOCHAT_SHARED_DATA)")
    prepare(args.work, args.ref)
    if args.what == "parity":
        parity(args.work, args.ref, args.seeds, args.steps, compile_ours=args.compile_ours, eager=not args.no_eager)
    elif args.what == "presets":
        presets(args.work, args.seeds, args.depths, args.steps)


if __name__ == "__main__":
    main()
