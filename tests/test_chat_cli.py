"""The terminal chat: one-shot (-p) as a real subprocess, and a multi-turn session read from stdin."""
from __future__ import annotations

import io
import os
import subprocess
import sys

import pytest

from tests.serve_helpers import export_tiny_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return export_tiny_model(tmp_path_factory.mktemp("cli") / "model")


def greedy_reply(model_dir, messages, max_tokens):
    """What the model answers at temperature 0, computed straight from the engine."""
    from nanochat.chat import render_for_completion
    from nanochat.checkpoint import load_model
    from nanochat.engine import Engine

    model, tok, _ = load_model(model_dir)
    prompt = render_for_completion(tok, {"messages": messages})
    (completion,), _ = Engine(model, tok).generate_batch(prompt, max_tokens=max_tokens, temperature=0.0)
    return tok.decode(completion)


def test_one_shot_prints_the_greedy_answer(model_dir):
    q = "Why is the sky blue?"
    r = subprocess.run([sys.executable, "-m", "nanochat.chat_cli", "--ckpt", str(model_dir), "-p", q, "-t", "0",
                        "--max-tokens", "12"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stderr
    expected = greedy_reply(model_dir, [{"role": "user", "content": q}], 12)
    assert expected and r.stdout == expected + "\n"


def test_interactive_session_from_stdin(model_dir, monkeypatch, capsys):
    from nanochat import chat_cli

    monkeypatch.setattr(sys, "stdin", io.StringIO("hello\n\nand then?\nclear\nagain\nquit\nnever read\n"))
    assert chat_cli.main(["--ckpt", str(model_dir), "-t", "0", "--max-tokens", "8"]) == 0
    out = capsys.readouterr().out
    assert "never read" not in out
    first = greedy_reply(model_dir, [{"role": "user", "content": "hello"}], 8)
    second = greedy_reply(model_dir, [{"role": "user", "content": "hello"}, {"role": "assistant", "content": first},
                                      {"role": "user", "content": "and then?"}], 8)
    third = greedy_reply(model_dir, [{"role": "user", "content": "again"}], 8)  # after clear: a fresh chat
    assert out.endswith(f"nanochat: {first}\nnanochat: {second}\n(conversation cleared)\nnanochat: {third}\n")


def test_errors_are_one_line(tmp_path, capsys):
    from nanochat import chat_cli

    assert chat_cli.main(["--ckpt", str(tmp_path / "nothing"), "-p", "hi"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: no model at")
