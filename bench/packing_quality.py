"""Each packing strategy at d4 on the embedded sample: training tok/s and val bpb, same tokens, same val set.

    python bench/packing_quality.py [--steps 60] [--packings bestfit concat cropfit]

Every run is the cpu profile's default base run (d4, context 256, 8,192 tokens per step, the latest tokenizer)
with only `data.loader.packing` changed. Validation is the reference's best-fit token set for all of them
(nanochat.dataloader.val_loader), so the val bpb figures compare. Prints `name: ours X, peer Y, ratio Z` lines
with the reference's best-fit as the peer.
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


def run(packing: str, steps: int, out: Path) -> dict:
    args = ["hardware=cpu", "stage=base", "logger=none", "stage.sample_every=0", "stage.eval_every=-1",
            f"stage.num_iterations={steps}", f"data.loader.packing={packing}", f"run_name={packing}",
            f"hydra.run.dir={out / packing}"]
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), *args], cwd=ROOT, capture_output=True, text=True,
                          env=dict(os.environ, NANOCHAT_OUTPUTS=str(out)))
    if proc.returncode != 0:
        sys.exit(proc.stderr[-3000:])
    return json.loads((out / packing / "summary.json").read_text())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--packings", nargs="+", default=["bestfit", "concat", "cropfit"])
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        results = {p: run(p, a.steps, Path(tmp)) for p in a.packings}
    ref = results.get("bestfit") or next(iter(results.values()))
    for packing, r in results.items():
        tokens = r["plan"]["total_batch_tokens"] * r["steps"]
        print(f"packing {packing} d4 {r['steps']} steps ({tokens:,} tokens): tok/s ours {r['tok_per_s']:,.0f}, "
              f"peer (bestfit) {ref['tok_per_s']:,.0f}, ratio {r['tok_per_s'] / ref['tok_per_s']:.3f}; "
              f"val bpb ours {r['val_bpb']:.4f}, peer {ref['val_bpb']:.4f}, diff {r['val_bpb'] - ref['val_bpb']:+.4f}")


if __name__ == "__main__":
    main()
