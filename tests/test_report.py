"""Report card: every section from synthetic run folders, the right table cells, real (non-blank) plots, the CLI."""
from __future__ import annotations

import json
import os
import time

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from nanochat import report, report_plots, report_runs  # noqa: E402
from nanochat.common import NanochatError  # noqa: E402

MODEL_CFG = {"sequence_len": 64, "vocab_size": 512, "n_layer": 2, "n_head": 1, "n_kv_head": 1, "n_embd": 128}


def write_run(root, stage, name, *, summary=None, evals=None, curves=True, hardware="cpu", depth=2, mtime=None):
    run = root / stage / name
    (run / "logs").mkdir(parents=True)
    accel = "cpu" if hardware == "cpu" else "gpu"
    (run / "config.yaml").write_text(
        f"model:\n  depth: {depth}\n  preset: v0\nhardware:\n  name: {hardware}\n  accelerator: {accel}\n"
        f"  devices: 1\n  num_nodes: 1\n  precision: 32-true\n  total_batch_tokens: 512\nstage:\n  name: {stage}\n")
    if summary is not None:
        (run / "summary.json").write_text(json.dumps({"stage": stage, **summary}))
    (run / "model").mkdir()
    (run / "model" / "config.json").write_text(json.dumps({"config": {**MODEL_CFG, "n_layer": depth}, "meta": {}}))
    if evals is not None:
        (run / "eval.json").write_text(json.dumps({"stage": stage, "seconds": 30.0, "results": evals,
                                                   "failed": {"humaneval": "sandbox unavailable"}}))
    if curves:  # sparse rows, as Lightning's CSVLogger writes them
        rows = ["epoch,lr-MuonAdamW,step,train/loss,val/bpb,val/loss"]
        for step in range(1, 41):
            rows.append(f"0,0.02,{step},{5.0 * 0.97 ** step:.4f},,")
            if step % 10 == 0:
                rows.append(f"0,,{step},,{3.0 - step / 40:.4f},{2.0:.3f}")
        (run / "logs" / "metrics.csv").write_text("\n".join(rows) + "\n")
    if mtime is not None:
        for f in [run / "summary.json", run / "eval.json", run / "config.yaml", run]:
            if f.exists():
                os.utime(f, (mtime, mtime))
    return run


@pytest.fixture()
def outputs(tmp_path):
    root = tmp_path / "outputs"
    now = time.time()
    (root / "tokenizer" / "tok").mkdir(parents=True)
    (root / "tokenizer" / "tok" / "summary.json").write_text(json.dumps(
        {"stage": "tokenizer", "vocab_size": 8192, "pattern": "v0", "fit_seconds": 12.0,
         "compression": {"nanochat": [8192, 4.12], "cl100k_base": [100277, 4.4]}}))
    write_run(root, "base", "old", summary={"steps": 5, "val_bpb": 9.9, "fit_seconds": 10}, mtime=now - 1000)
    write_run(root, "base", "d2", evals={"core": {"score": 0.1234, "tasks": {
        "hellaswag_zeroshot": {"accuracy": 0.3, "centered": 0.06, "n": 100}}}, "bpb": {"score": 1.91}},
        summary={"steps": 40, "val_bpb": 2.0, "fit_seconds": 1800.0, "tok_per_s": 4100, "mfu": 0.39,
                 "plan": {"n_params": 3_500_000, "total_tokens": 20480, "total_flops": 1.5e12}}, hardware="h100")
    write_run(root, "mid", "d2", summary={"steps": 20, "val_bpb": 1.8, "fit_seconds": 600.0}, hardware="h100",
              evals={"arc_easy": {"score": 0.3}, "arc_challenge": {"score": 0.25}, "mmlu": {"score": 0.28},
                     "gsm8k": {"score": 0.01}, "chatcore": {"score": 0.05}})
    write_run(root, "sft", "d2", summary=None, curves=False,  # crashed before summary.json, never evaluated
              hardware="h100")
    return root


def _table(md: str) -> dict[str, list[str]]:
    section = md.split("## Summary", 1)[1].split("\n\n", 2)[1]
    rows = [line.strip("|").split("|") for line in section.splitlines()[2:]]
    return {r[0].strip(): [c.strip() for c in r[1:]] for r in rows}


def _assert_real_png(path):
    import matplotlib.image as mpimg

    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    img = mpimg.imread(str(path))[..., :3]
    assert img.shape[0] > 200 and img.shape[1] > 300
    assert img.std() > 0.05  # not a blank canvas
    assert (np.abs(img - img[0, 0]).sum(-1) > 0.1).mean() > 0.02  # a visible share of drawn pixels


def test_report_has_every_section_and_the_right_cells(outputs, tmp_path):
    path = report.build_report(outputs, tmp_path / "card" / "report.md", price_per_hour=2.0)
    md = path.read_text()
    for heading in ("# nanochat report card", "## Environment", "## Tokenizer", "## BASE", "## MID", "## SFT",
                    "## RL", "## Summary"):
        assert heading in md, heading
    assert "git commit:" in md and "torch" in md and "lightning" in md and "CPU:" in md
    table = _table(md)
    assert list(table) == ["CORE", "ARC-Easy", "ARC-Challenge", "MMLU", "GSM8K", "HumanEval", "ChatCORE"]
    assert table["CORE"] == ["0.1234", "-", "-", "-"]
    assert table["ARC-Easy"] == ["-", "0.3000", "-", "-"]
    assert table["ChatCORE"] == ["-", "0.0500", "-", "-"]
    assert table["HumanEval"] == ["-", "-", "-", "-"]
    base = md.split("## BASE", 1)[1].split("## MID", 1)[0]
    assert "outputs/base/d2" in base and "9.9" not in base  # the newest base run, not the old one
    assert "| parameters | 3.50M |" in base and "| MFU | 39.0% |" in base and "| validation bpb | 2.0000 |" in base
    assert "| final training loss | 1.4786 |" in base  # the last train/loss row (5 * 0.97^40)
    assert "hellaswag_zeroshot" in base and "humaneval: sandbox unavailable" in base
    mid = md.split("## MID", 1)[1].split("## SFT", 1)[0]
    assert "| parameters | 524.29K |" in mid  # no plan: counted from model/config.json (2*512*128 + 12*2*128^2)
    assert "| ARC-Easy | 0.3000 |" in mid
    assert "summary.json missing" in md.split("## SFT", 1)[1].split("## RL", 1)[0]
    assert "Not run" in md.split("## RL", 1)[1].split("## Summary", 1)[0]
    assert "vocabulary: 8192" in md and "| cl100k_base | 100277 | 4.400 |" in md
    # 1800 s + 30 s eval + 600 s + 30 s on one GPU, plus the 12 s tokenizer: 41 min, 0.683 GPU-hours at $2
    assert "Total wall time (training + evaluation, all stages): 41m12s" in md
    assert "Estimated cost: $1.37" in md
    for name in ("base_curves.png", "mid_curves.png", "evaluation.png"):
        assert f"](report_plots/{name})" in md
        _assert_real_png(tmp_path / "card" / "report_plots" / name)
    assert not (tmp_path / "card" / "report_plots" / "sft_curves.png").exists()


def test_report_survives_missing_and_broken_files(tmp_path):
    root = tmp_path / "outputs"
    run = write_run(root, "base", "d1", summary=None, curves=False)
    (run / "config.yaml").write_text(": not [yaml")
    (run / "summary.json").write_text("{broken")
    (run / "model" / "config.json").unlink()
    md = report.build_report(root).read_text()
    assert "No tokenizer run found" in md and "Cost: a CPU run" in md
    assert all(c == "-" for row in _table(md).values() for c in row)
    assert (root / "report.md").exists()


def test_scaling_plot_and_sweep_section(tmp_path):
    root = tmp_path / "outputs"
    for i, depth in enumerate((2, 4, 6)):
        write_run(root, "base", f"multirun/d{depth}_{i}", depth=depth, summary={
            "steps": 40, "val_bpb": 2.5 - 0.3 * i, "fit_seconds": 60,
            "plan": {"total_flops": 10 ** (12 + i)}}, evals={"core": {"score": 0.05 * i}} if i else None)
    png = report_plots.scaling_plot(report_runs.find_runs(root, "base"), tmp_path / "s.png")
    _assert_real_png(png)
    md = report.build_report(root).read_text()
    assert "## Scaling sweep" in md and "](report_plots/scaling.png)" in md
    with pytest.raises(NanochatError, match="FLOP"):
        report_plots.scaling_plot([root / "base" / "nowhere"], tmp_path / "x.png")


def test_cli(outputs, tmp_path, capsys):
    assert report.main([f"outputs={outputs}", f"out={tmp_path / 'r.md'}", "price_per_hour=1.5"]) == 0
    assert (tmp_path / "r.md").exists() and "at $1.5 per GPU-hour" in (tmp_path / "r.md").read_text()
    with pytest.raises(SystemExit) as exit_:
        report.main([f"outputs={tmp_path / 'missing'}"])
    assert exit_.value.code == 1
    assert capsys.readouterr().err.startswith("error: no outputs folder")
