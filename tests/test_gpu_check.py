"""bench/gpu_check.py: the dry pass runs every section on the CPU; one failing section is recorded, not fatal."""
import json
import subprocess
import sys

import pytest

from tests.helpers import ROOT, env_for

sys.path.insert(0, str(ROOT / "bench"))
import gpu_check  # noqa: E402


def test_dry_pass_runs_every_section(tmp_path):
    """The whole check at toy sizes (d2, 3 steps, CPU): the real train.py tokenizer and base stages, the server and
    the openai client, the kernel comparisons. ~20-30 s: two train.py start-ups dominate."""
    out = tmp_path / "check"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--dry-run", "--out", str(out),
                           "--budget", "600"], cwd=ROOT, env=env_for(tmp_path / "base"), capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    record = json.loads((out / "gpu_check.json").read_text())
    sections = record["sections"]
    expected = [name for name, _ in gpu_check_sections().SECTIONS(gpu_check.dry_sizes())]
    assert list(sections) == expected
    failed = {k: v.get("error") for k, v in sections.items() if v["status"] != "ok"}
    assert not failed, failed
    assert record["dry_run"] is True
    assert sections["peak"]["bf16_flops"] > 0
    train = sections["train_d2"]
    assert train["tok_per_s"] > 0 and train["mfu"] > 0 and train["steps"] == 3
    assert train["peak_flops"] == sections["peak"]["fp32_flops"]  # MFU against the check's own probe (cpu: fp32)
    assert train["peak_flops_source"].startswith("measured") and train["memory"]["estimate_bytes"] > 0
    assert train["compile_s"] >= 0 and train["device_batch"] * train["grad_accum"] == 4  # the memory fit's split
    assert set(sections["engine"]["batches"]) == {"1", "16", "64"}
    assert all(r["decode_tok_per_s"] > 0 for r in sections["engine"]["batches"].values())
    serve = sections["serve"]
    assert serve["model_source"] == "trained" and serve["n2_choices"] == 2 and serve["bad_request"].startswith("400")
    assert sections["evaluation"]["eval_loss_finite"] and sections["evaluation"]["train_graphs"] >= 1
    assert sections["fp8"]["matmuls"] and sections["attention"] and sections["loss"]
    md = (out / "gpu_check.md").read_text()
    assert "| train_d2 | ok |" in md and "Dry pass on CPU" in md


def gpu_check_sections():
    import gpu_check_sections

    return gpu_check_sections


def test_a_failing_section_is_recorded_and_the_rest_run(tmp_path):
    check = gpu_check.Check(tmp_path, gpu_check.dry_sizes(), budget_s=60, dry=True)

    def broken(_):
        raise ValueError("no such kernel\nsecond line of detail")

    check.run("broken", broken)
    check.run("fine", lambda c: {"x": 1})
    assert check.results["broken"]["status"] == "error"
    assert check.results["broken"]["error"] == "ValueError: no such kernel"  # one line
    assert check.results["fine"] == {"status": "ok", "x": 1, "seconds": check.results["fine"]["seconds"]}
    assert "second line of detail" in check.log_path.read_text()  # the traceback goes to the log
    json_path, md_path = gpu_check.write_outputs(check)
    assert json.loads(json_path.read_text())["sections"]["broken"]["status"] == "error"
    assert "| broken | error |" in md_path.read_text()


def test_the_budget_skips_what_no_longer_fits(tmp_path):
    sizes = gpu_check.dry_sizes()
    sizes.section_min_s = {"big": 100}
    check = gpu_check.Check(tmp_path, sizes, budget_s=50, dry=False)  # the GPU rule: a section needs its minimum
    ran = []
    check.run("big", lambda c: ran.append("big"))
    check.run("small", lambda c: ran.append("small"))
    assert ran == ["small"]
    assert check.results["big"]["status"] == "skipped" and "time budget" in check.results["big"]["error"]


@pytest.mark.parametrize("script", ["prepare_wheels.sh", "run_check.sh"])
def test_scripts_parse(script):
    subprocess.run(["bash", "-n", str(ROOT / "scripts" / "gpu" / script)], check=True)
