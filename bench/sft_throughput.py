"""SFT supervised tokens/s versus base training tokens/s at the same size on CPU, and the padding overhead.

    python bench/sft_throughput.py [--depth 4] [--steps 12] [--mixture offline_sft]

Runs, side by side in one process tree: `stage=base` for --steps steps (d4, context 256, the cpu profile), then
`stage=sft` from that model for --steps steps on the mixture, and reads each run's median tok/s from its
summary.json. Also renders the whole mixture once to report the fraction of padded positions of the SFT
layout (one conversation per row, padded to the longest of its micro-batch) and of the packed mid layout.
Prints `name: ours X, peer Y, ratio Z` lines (peer = base training).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def train(args: list[str], env: dict) -> dict:
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), *args], cwd=ROOT, env=env, capture_output=True,
                          text=True)
    if proc.returncode != 0:
        sys.exit(proc.stderr[-3000:])
    run_dir = next(a.split("=", 1)[1] for a in args if a.startswith("hydra.run.dir="))
    return json.loads((Path(run_dir) / "summary.json").read_text())


def padding(mixture: str, tokenizer, seq_len: int, batch: int) -> dict:
    from omegaconf import OmegaConf

    from nanochat.chat_data import ChatLoader
    from nanochat.tasks import build_from_config

    task = build_from_config(OmegaConf.to_container(OmegaConf.load(ROOT / "nanochat" / "mixtures" / f"{mixture}.yaml")))
    out = {}
    for layout in ("pad", "pack"):
        loader = ChatLoader(task, tokenizer, batch, seq_len, layout=layout, epochs=1, accum=8)  # 32 per step
        for _ in loader:
            pass
        out[layout] = loader.stats["padded_positions"] / max(1, loader.stats["positions"])
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--mixture", default="offline_sft")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        env = dict(os.environ, NANOCHAT_OUTPUTS=str(tmp / "outputs"), PYTHONUNBUFFERED="1")
        from nanochat.tokenizer import get_tokenizer

        tok = get_tokenizer()  # the latest trained tokenizer (python train.py stage=tokenizer)
        common = ["hardware=cpu", f"model.depth={a.depth}", "logger=none", "stage.sample_every=0",
                  "stage.eval_every=-1", "stage.eval_tokens=8192"]
        base = train([*common, "stage=base", f"stage.num_iterations={a.steps}",
                      f"hydra.run.dir={tmp / 'outputs' / 'base' / 'b'}"], env)
        sft = train([*common, "stage=sft", f"stage.num_iterations={a.steps}", f"mixture={a.mixture}",
                     "stage.eval_batches=1", f"hydra.run.dir={tmp / 'outputs' / 'sft' / 's'}"], env)
        pads = padding(a.mixture, tok, base["plan"]["seq_len"], 4)
    ratio = sft["supervised_tok_per_s"] / base["tok_per_s"]
    print(f"sft supervised tok/s d{a.depth}: ours {sft['supervised_tok_per_s']:,.0f}, peer (base tok/s) "
          f"{base['tok_per_s']:,.0f}, ratio {ratio:.2f} (target >= 0.5)")
    print(f"sft all tok/s d{a.depth} (incl. prompts and padding): ours {sft['tok_per_s']:,.0f}, peer "
          f"{base['tok_per_s']:,.0f}, ratio {sft['tok_per_s'] / base['tok_per_s']:.2f}")
    print(f"padded positions of {a.mixture}: pad layout (sft) {pads['pad']:.1%}, pack layout (mid) {pads['pack']:.1%}")


if __name__ == "__main__":
    main()
