"""Per-program overhead of the code sandbox: `run_program` vs a bare `python -c` subprocess (no confinement).

Two programs: a trivial one (`pass`) and a HumanEval canonical solution with its tests (from the shared data, or
a small built-in stand-in when absent). Median wall time in ms over `--reps` runs, alternating the two sides.

    python bench/sandbox.py [--reps 20]
"""
from __future__ import annotations

import argparse
import gzip
import json
import statistics
import subprocess
import sys
import time

from nanochat.common import shared_data_dir
from nanochat.execution import run_program

STAND_IN = '''
def add(a, b):
    return a + b

def check(f):
    assert f(2, 3) == 5
    assert f(-1, 1) == 0

check(add)
'''


def humaneval_program() -> tuple[str, str]:
    root = shared_data_dir()
    path = root / "humaneval" / "HumanEval.jsonl.gz" if root else None
    if path is None or not path.exists():
        return "built-in stand-in", STAND_IN
    with gzip.open(path, "rt", encoding="utf-8") as f:
        p = json.loads(f.readline())
    return p["task_id"], p["prompt"] + p["canonical_solution"] + "\n\n" + p["test"] + f"\n\ncheck({p['entry_point']})\n"


def bare(code: str) -> bool:
    return subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, timeout=30).returncode == 0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=20)
    args = ap.parse_args()
    name, program = humaneval_program()
    first = run_program("pass")
    print(f"isolation layers: {', '.join(first.isolation)}")
    for label, code in (("trivial", "pass"), (f"humaneval ({name})", program)):
        ours, peer = [], []
        for _ in range(args.reps):
            t0 = time.perf_counter()
            result = run_program(code)
            ours.append(time.perf_counter() - t0)
            if not result.passed:
                sys.exit(f"{label}: the sandboxed program failed: {result.output[-500:]}")
            t0 = time.perf_counter()
            if not bare(code):
                sys.exit(f"{label}: the bare program failed")
            peer.append(time.perf_counter() - t0)
        o, p = 1000 * statistics.median(ours), 1000 * statistics.median(peer)
        print(f"sandbox {label} ms per program: ours {o:.1f} (confined), peer {p:.1f} (bare python -I -c), "
              f"ratio {o / p:.2f}")


if __name__ == "__main__":
    main()
