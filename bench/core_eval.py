"""CORE evaluation speed on CPU: batched forward passes (ours) vs one example per forward pass (the reference's way).

Runs `evaluate_core` over the CORE task files in the shared data (a bundle folder is written to a temporary
directory: core.yaml from llm-foundry's task list, the eval_data folder linked in place) with random d4 and d8
models (d_model = 64 * depth, head_dim 128, context 2048) and a tokenizer (the latest trained one, else a
byte-level one). Both sides score the same examples and must agree on every accuracy; examples/s is the median
over `--reps` runs. Prompts are whole (`--prompts full`, the reference's way) unless `--prompts crop`; each
task needs more rows than its few-shot count, so `--max-per-task` is at least 11 (the 10-shot tasks).

    python bench/core_eval.py [--depths 4 8] [--max-per-task 11] [--batch-size 32] [--prompts full|crop]
                              [--reps 1] [--threads 2]
"""
from __future__ import annotations

import argparse
import csv
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

from nanochat.common import NanochatError, shared_data_dir
from nanochat.core_eval import PROMPT_MODES, evaluate_core
from nanochat.gpt import GPT
from nanochat.scaling import model_config

# DCLM tasks that llm-foundry's task list does not describe: (type, few-shot, random baseline %)
EXTRA = {"bigbench_cs_algorithms": ("language_modeling", 10, 0.0),
         "bigbench_language_identification": ("multiple_choice", 10, 25.0),
         "bigbench_repeat_copy_logic": ("language_modeling", 10, 0.0)}


def write_bundle(folder: Path) -> Path:
    root = shared_data_dir()
    src = root / "core_eval" if root else None
    if src is None or not (src / "eval_data").is_dir():
        sys.exit("the shared CORE task files are not present (NANOCHAT_SHARED_DATA)")
    tasks = yaml.safe_load((src / "llm-foundry_tasks_v0.3.yaml").read_text())["icl_tasks"]
    gauntlet = yaml.safe_load((src / "llm-foundry_eval_gauntlet_v0.3.yaml").read_text())["eval_gauntlet"]
    baselines = {b["name"]: 100.0 * b["random_baseline"] for c in gauntlet["categories"] for b in c["benchmarks"]}
    files = {p.name for p in (src / "eval_data").glob("*.jsonl")}
    icl, rows = [], []
    for t in tasks:
        name = Path(t["dataset_uri"]).name
        if name in files and t["label"] not in EXTRA:
            icl.append({"label": t["label"], "dataset_uri": name, "num_fewshot": t["num_fewshot"][:1],
                        "icl_task_type": t["icl_task_type"],
                        "continuation_delimiter": t.get("continuation_delimiter", " ")})
            rows.append((t["label"], baselines[t["label"]]))
    for label, (kind, shots, base) in EXTRA.items():
        icl.append({"label": label, "dataset_uri": f"{label}.jsonl", "num_fewshot": [shots], "icl_task_type": kind})
        rows.append((label, base))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "eval_data").symlink_to(src / "eval_data")
    (folder / "core.yaml").write_text(yaml.safe_dump({"icl_tasks": icl}))
    with open(folder / "eval_meta_data.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["Eval Task", "Random baseline"])
        w.writerows(rows)
    return folder


def load_tokenizer():
    from nanochat.tokenizer import Tokenizer, get_tokenizer

    try:
        return get_tokenizer(), "latest trained"
    except (NanochatError, OSError):
        return Tokenizer.byte_level(), "byte-level"


def build_model(depth: int, vocab: int) -> GPT:
    torch.manual_seed(0)
    model = GPT(model_config(depth, vocab_size=vocab, seq_len=2048))
    model.init_weights()
    with torch.no_grad():  # zero-initialised projections would make every choice score the same
        for p in model.parameters():
            if p.ndim == 2 and p.abs().max() == 0:
                p.normal_(0.0, 0.02)
    return model.eval()


def timed(model, tok, bundle, max_per_task, batch_size, prompts) -> tuple[float, dict]:
    t0 = time.perf_counter()
    res = evaluate_core(model, tok, bundle, max_per_task=max_per_task, batch_size=batch_size, prompts=prompts,
                        progress=False)
    return time.perf_counter() - t0, res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--depths", type=int, nargs="+", default=[4, 8])
    ap.add_argument("--max-per-task", type=int, default=11, help="at least 11: some tasks are 10-shot")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--prompts", choices=PROMPT_MODES, default="full")
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    tok, tok_name = load_tokenizer()
    with tempfile.TemporaryDirectory() as tmp:
        bundle = write_bundle(Path(tmp) / "bundle")
        print(f"tokenizer: {tok_name} (vocab {tok.vocab_size}), {args.max_per_task} examples per task, "
              f"{args.prompts} prompts, batch {args.batch_size} examples, {args.threads} threads")
        for depth in args.depths:
            model = build_model(depth, tok.vocab_size)
            ours, peer = [], []
            for _ in range(args.reps):  # alternate the two sides so that machine load hits both alike
                try:
                    s_peer, r_peer = timed(model, tok, bundle, args.max_per_task, 1, args.prompts)
                    s_ours, r_ours = timed(model, tok, bundle, args.max_per_task, args.batch_size, args.prompts)
                except NanochatError as e:
                    sys.exit(f"error: {e}")
                n = sum(t["n"] for t in r_ours["tasks"].values())
                acc_ours = {k: v["accuracy"] for k, v in r_ours["tasks"].items()}
                acc_peer = {k: v["accuracy"] for k, v in r_peer["tasks"].items()}
                if acc_ours != acc_peer:
                    diff = {k: (acc_ours[k], acc_peer[k]) for k in acc_ours if acc_ours[k] != acc_peer[k]}
                    print(f"  note: accuracies differ (float rounding between batch shapes): {diff}")
                ours.append(n / s_ours)
                peer.append(n / s_peer)
            o, p = statistics.median(ours), statistics.median(peer)
            cropped = sum(t.get("cropped", 0) for t in r_ours["tasks"].values())
            print(f"core_eval d{depth} examples/s: ours {o:.2f} (batched), peer {p:.2f} (one at a time), "
                  f"ratio {o / p:.2f} (target >= 3); {n} examples ({cropped} cropped), CORE {r_ours['core']:.4f}")


if __name__ == "__main__":
    main()
