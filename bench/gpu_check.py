"""One command that measures what a GPU does with nanochat, and writes it down: JSON + markdown in `--out`.

    python bench/gpu_check.py --out gpu_check_out            # on an H100 / H200 / GB10: about 8 minutes
    python bench/gpu_check.py --out /tmp/check --dry-run     # anywhere: a tiny CPU pass (d2, a few steps)

Sections, in order: device and software versions; the measured dense bf16 matmul peak (nanochat.probe); a tokenizer
(`train.py stage=tokenizer`); real base training per depth (`train.py stage=base`: compile, the memory fit, tok/s and
MFU from summary.json, compile time from the per-step log, peak memory against nanochat.memory's estimate); the
attention kernels on a windowed model; plain vs chunked loss; an evaluation pass after training steps (does the
evaluation graph recompile, and how much memory does it take on top); engine prefill and decode tok/s at batch
1/16/64; a serve smoke test (official `openai` client against our server); fp8 vs bf16 where the GPU has fp8.

The one idea: every section is guarded. A failure is recorded with its one-line error and the next section runs;
a section that needs more time than the budget has left is recorded as skipped. The dry pass runs every section
for real at toy sizes, so a CPU test proves the script before a GPU ever sees it. Section bodies live in
bench/gpu_check_sections.py.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))  # the sibling bench modules (attention, logits_memory, fp8)


@dataclass
class Sizes:
    """Everything that differs between the GPU check and the dry pass."""

    profile: str  # hardware profile for the training runs
    device: str
    depths: tuple[int, ...]
    seq_len: int
    batch_rows: int  # rows per optimizer step (the memory fit splits them into micro-batches)
    steps: int
    peak_sizes: tuple[int, ...]
    tokenizer: list[str]  # train.py overrides for stage=tokenizer
    data: list[str]  # train.py overrides naming the training data
    attention: dict = field(default_factory=dict)  # depth, seq_len, batch, steps
    loss: dict = field(default_factory=dict)  # depth, seq_len, batch, chunk, steps
    evaluation: dict = field(default_factory=dict)  # depth, seq_len, batch, steps, backend
    engine: dict = field(default_factory=dict)  # depth, prompt, decode, batches
    serve: dict = field(default_factory=dict)  # max_tokens
    fp8: dict = field(default_factory=dict)  # tokens, d, train_steps
    section_min_s: dict = field(default_factory=dict)  # seconds a section needs to be worth starting


def gpu_sizes(device_name: str) -> Sizes:
    spark = "GB10" in device_name
    return Sizes(
        profile="dgx_spark" if spark else "h100", device="cuda", depths=(12, 20, 24), seq_len=2048, batch_rows=32,
        steps=20, peak_sizes=(4096, 8192),
        tokenizer=["data=sample", "data.tokenizer.max_chars=20000000"], data=["data=sample"],
        attention=dict(depth=12, seq_len=2048, batch=8, steps=5),
        loss=dict(depth=12, seq_len=2048, batch=8, chunk=2048, steps=5),
        evaluation=dict(depth=12, seq_len=2048, batch=8, steps=3, backend="inductor"),
        engine=dict(depth=12, prompt=512, decode=64, batches=(1, 16, 64)),
        serve=dict(max_tokens=32), fp8=dict(tokens=16384, d=768, train_steps=20),
        section_min_s={"train_d12": 90, "train_d20": 120, "train_d24": 150, "evaluation": 60, "attention": 30,
                       "loss": 20, "engine": 15, "serve": 15, "fp8": 10},
    )


def dry_sizes() -> Sizes:
    return Sizes(
        profile="cpu", device="cpu", depths=(2,), seq_len=64, batch_rows=4, steps=3, peak_sizes=(256, 512),
        tokenizer=["data.tokenizer.vocab_size=300", "data.tokenizer.max_chars=200000"], data=[],
        attention=dict(depth=2, seq_len=64, batch=2, steps=1),
        loss=dict(depth=2, seq_len=64, batch=2, chunk=16, steps=1),
        evaluation=dict(depth=2, seq_len=32, batch=2, steps=1, backend="eager"),
        engine=dict(depth=2, prompt=8, decode=4, batches=(1, 16, 64)),
        serve=dict(max_tokens=4), fp8=dict(tokens=32, d=64, train_steps=0),
    )


class Check:
    """Runs sections against one time budget; collects results, errors and timings."""

    def __init__(self, out: Path, sizes: Sizes, budget_s: float, dry: bool):
        self.out, self.sizes, self.budget_s, self.dry = out, sizes, budget_s, dry
        self.t0 = time.monotonic()
        self.work = out / "work" if dry else Path(os.environ.get("TMPDIR", "/tmp")) / "nanochat_gpu_check"
        self.log_path = out / "gpu_check.log"
        self.results: dict[str, dict] = {}
        self.shared: dict = {}  # what one section hands another (tokenizer folder, model folders, peak)

    def left(self) -> float:
        return self.budget_s - (time.monotonic() - self.t0)

    def log(self, text: str) -> None:
        with open(self.log_path, "a") as f:
            f.write(text.rstrip("\n") + "\n")

    def run(self, name: str, fn) -> None:
        need = 0 if self.dry else self.sizes.section_min_s.get(name, 5)
        if self.left() < need:
            self.results[name] = {"status": "skipped", "error": f"time budget: {self.left():.0f} s left, needs ~{need} s"}
            print(f"[gpu_check] {name}: skipped ({self.results[name]['error']})", flush=True)
            return
        print(f"[gpu_check] {name} ...", flush=True)
        t = time.monotonic()
        try:
            result = {"status": "ok", **(fn(self) or {})}
        except BaseException as e:  # noqa: BLE001  (one section's failure must not stop the others)
            if isinstance(e, KeyboardInterrupt):
                raise
            first = (str(e).strip().splitlines() or [""])[0]
            result = {"status": "error", "error": f"{type(e).__name__}: {first}"[:300]}
            self.log(f"--- {name} failed\n{traceback.format_exc()}")
        result["seconds"] = round(time.monotonic() - t, 2)
        release_memory()
        self.results[name] = result
        status = result["status"] if result["status"] == "ok" else f"{result['status']}: {result.get('error')}"
        print(f"[gpu_check] {name}: {status} ({result['seconds']:.1f} s)", flush=True)

    def record(self) -> dict:
        return {"dry_run": self.dry, "budget_s": self.budget_s, "elapsed_s": round(time.monotonic() - self.t0, 1),
                "sections": self.results}


def release_memory() -> None:
    """What a finished section allocated on the GPU goes back before the next one measures."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def write_outputs(check: Check) -> tuple[Path, Path]:
    from nanochat.common import atomic_write_bytes
    from gpu_check_sections import render_markdown

    record = check.record()
    json_path, md_path = check.out / "gpu_check.json", check.out / "gpu_check.md"
    atomic_write_bytes(json_path, (json.dumps(record, indent=2, default=str) + "\n").encode())
    atomic_write_bytes(md_path, render_markdown(record).encode())
    return json_path, md_path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="gpu_check_out", help="folder for gpu_check.json, gpu_check.md, gpu_check.log")
    ap.add_argument("--dry-run", action="store_true", help="tiny CPU pass (the default without CUDA)")
    ap.add_argument("--budget", type=float, default=None, help="seconds for the whole check (GPU 450, dry 120)")
    ap.add_argument("--only", nargs="*", default=None, help="run only these sections (names as in the report)")
    args = ap.parse_args(argv)

    import torch

    from gpu_check_sections import SECTIONS

    dry = args.dry_run or not torch.cuda.is_available()
    sizes = dry_sizes() if dry else gpu_sizes(torch.cuda.get_device_name(0))
    budget = args.budget if args.budget is not None else (120.0 if dry else 450.0)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    check = Check(out, sizes, budget, dry)
    # the check's tokenizer, sample corpus, peak cache and runs stay out of the user's own (its tokenizer would
    # otherwise replace theirs as the latest); an explicit NANOCHAT_BASE_DIR / NANOCHAT_OUTPUTS wins
    os.environ.setdefault("NANOCHAT_BASE_DIR", str(check.work / "base"))
    os.environ.setdefault("NANOCHAT_OUTPUTS", str(check.work / "outputs"))
    check.log_path.write_text("")
    print(f"[gpu_check] {'dry pass on CPU' if dry else torch.cuda.get_device_name(0)}; budget {budget:.0f} s; "
          f"results in {out}", flush=True)
    for name, fn in SECTIONS(sizes):
        if args.only is None or name in args.only or name.split("_")[0] in args.only:
            check.run(name, fn)
    json_path, md_path = write_outputs(check)
    failed = [n for n, r in check.results.items() if r["status"] == "error"]
    print(f"[gpu_check] done in {check.record()['elapsed_s']:.0f} s: {json_path}, {md_path}"
          + (f"; failed: {', '.join(failed)}" if failed else ""), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
