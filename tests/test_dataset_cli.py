"""`python -m nanochat.dataset`: the project's key=value command convention (--help, one-line errors, exit 1)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from nanochat.dataset import main

ROOT = Path(__file__).resolve().parent.parent


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nanochat.dataset", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)


def test_help_lists_commands_and_keys():
    proc = run_cli("--help")
    assert proc.returncode == 0 and proc.stderr == ""
    out = proc.stdout
    assert out.startswith("usage: python -m nanochat.dataset <command> [key=value ...]")
    for word in ("download", "info", "sample", "data ", "climbmix", "n ", "dir ", "base_url", "workers", "retries",
                 "total_shards"):
        assert word in out


@pytest.mark.parametrize("args, message", [
    (["download", "n=abc"], "error: n: 'abc' is not an integer"),
    (["download"], "error: download needs n=<number of training shards> (see --help)"),
    (["download", "n=-1"], "error: n: -1 is out of range; expected a value >= 0"),
    (["frobnicate"], "error: command: 'frobnicate' is not allowed; expected one of: download, info, sample"),
    (["download", "n=1", "data=pile"], "error: data: 'pile' is not allowed; expected one of: fineweb_edu, climbmix"),
    (["info", "colour=red"], "error: colour: unknown key (see --help for the keys)"),
    ([], "error: command must be given (see --help)"),
])
def test_bad_arguments_are_one_line_and_exit_1(args, message):
    proc = run_cli(*args)
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == [message] and "Traceback" not in proc.stdout


def test_info_in_process(tmp_path, capsys):
    assert main(["info", f"dir={tmp_path}", "total_shards=6"]) == 0
    out = capsys.readouterr().out
    assert f"fineweb_edu: {tmp_path}: 0 training shards, validation shard missing" in out and "| d20 |" in out


def test_info_lists_every_hub_data_set(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("NANOCHAT_BASE_DIR", str(tmp_path))
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert f"fineweb_edu: {tmp_path / 'base_data'}: 0 training shards" in out
    assert f"climbmix: {tmp_path / 'base_data_climbmix'}: 0 training shards, validation shard missing" in out


def test_data_core_imports_without_hydra():
    """The command convention needs Hydra/OmegaConf; importing the data modules must not."""
    code = ("import sys, nanochat.dataset, nanochat.core_eval; "
            "print(sorted(m for m in ('hydra', 'omegaconf') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stderr
