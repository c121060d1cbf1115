"""The 2026 recipes as experiments: `plan_only=true` prints the reference's speedrun and the one-Spark run."""
import re
import subprocess

import torch

from tests.helpers import ROOT, env_for, train_cmd


def _plans(tmp_path) -> dict[str, str]:
    """Both experiments' plan_only output (run side by side: each is a few Python start-ups)."""
    procs = {}
    for exp in ("speedrun_2026", "spark_2026"):
        env = env_for(tmp_path / exp)
        env["NANOCHAT_OUTPUTS"] = str(tmp_path / exp / "outputs")
        procs[exp] = subprocess.Popen(train_cmd([f"experiment={exp}", "plan_only=true"]), cwd=ROOT, env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out = {}
    for exp, proc in procs.items():
        text, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, text[-2000:]
        out[exp] = text
        assert not (tmp_path / exp / "outputs").exists(), "plan_only wrote a run folder"
    return out


def test_2026_experiments_plan_the_reference_runs(tmp_path):
    plans = _plans(tmp_path)
    speedrun, spark = plans["speedrun_2026"], plans["spark_2026"]
    for text in (speedrun, spark):
        assert "=== tokenizer: vocab 32,768" in text and "'climbmix'" in text
        assert "plan: preset jul2026" in text
        assert "features   windows SSSL (short = 0.25 x context), value embeddings, residual scalars, smear, backout" in text
        assert "(8.00 tokens/param; from param_data_ratio)" in text
        assert "warmup 40 steps, warmdown last 65%, final lr x0.05" in text
        assert "=== sft: starts from" in text and "/base/" in text.split("=== sft: starts from")[1].split("\n")[0]
        assert "=== mid" not in text
    # the speedrun: d24 on 8 GPUs, the auto batch 2^20 as 16 rows x 2048 x 8 devices x 4 steps
    assert "depth 24" in speedrun and "d_model 1536" in speedrun
    assert "batch      1,048,576 tokens = 16 x 2,048 x 8 device(s) x 4 accumulation step(s)" in speedrun
    assert "5,568 steps" in speedrun
    # one Spark: d18 finishing in about a day and a half at the profile's measured rate
    assert "depth 18" in spark and "1 device(s)" in spark
    hours = float(re.search(r"run estimate: .* -> ([\d.]+) h", spark).group(1))
    if not torch.cuda.is_available():  # planned without the GPU: GB10's nominal peak, not a probe of this CPU
        assert "of 9.5e+13 FLOP/s each (nominal for dgx_spark, not measured: no CUDA GPU here)" in spark
    assert 25 <= hours <= 40, hours
