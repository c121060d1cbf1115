"""The terminal chat: one-shot (a prompt) as a real subprocess, a multi-turn session read from stdin, the CLI."""
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
    expected = greedy_reply(model_dir, [{"role": "user", "content": q}], 12)
    for args in ([f"ckpt={model_dir}", f"prompt={q}", "temperature=0", "max_tokens=12"],
                 [q, f"ckpt={model_dir}", "temperature=0", "max_tokens=12"]):  # the prompt as first argument
        r = subprocess.run([sys.executable, "-m", "nanochat.chat_cli", *args], capture_output=True, text=True,
                           cwd=ROOT, timeout=120)
        assert r.returncode == 0, r.stderr
        assert expected and r.stdout == expected + "\n"


def test_free_text_is_taken_verbatim():
    from nanochat.chat_cli import split_text

    assert split_text(["What's 2+2=?, said I", "ckpt=x"]) == (["ckpt=x"], {"prompt": "What's 2+2=?, said I"})
    assert split_text(["top_k=3", "system=Be brief, be kind.", "prompt=a=b"]) == (
        ["top_k=3"], {"system": "Be brief, be kind.", "prompt": "a=b"})
    assert split_text(["colour=red"]) == (["colour=red"], {})  # a setting-like typo stays a setting (an error)
    assert split_text(["--help"]) == (["--help"], {})


def test_interactive_session_from_stdin(model_dir, monkeypatch, capsys):
    from nanochat import chat_cli

    monkeypatch.setattr(sys, "stdin", io.StringIO("hello\n\nand then?\nclear\nagain\nquit\nnever read\n"))
    assert chat_cli.main([f"ckpt={model_dir}", "temperature=0", "max_tokens=8"]) == 0
    out = capsys.readouterr().out
    assert "never read" not in out
    first = greedy_reply(model_dir, [{"role": "user", "content": "hello"}], 8)
    second = greedy_reply(model_dir, [{"role": "user", "content": "hello"}, {"role": "assistant", "content": first},
                                      {"role": "user", "content": "and then?"}], 8)
    third = greedy_reply(model_dir, [{"role": "user", "content": "again"}], 8)  # after clear: a fresh chat
    assert out.endswith(f"nanochat: {first}\nnanochat: {second}\n(conversation cleared)\nnanochat: {third}\n")
