"""The terminal chat: one-shot (a prompt) as a real subprocess, a multi-turn session read from stdin, the CLI."""
from __future__ import annotations

import io
import os
import subprocess
import sys

import pytest

from nanochat.chat_render import Reply
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


# The CLI in a real terminal (a pseudo-terminal). Its engine is scripted, 10-50 ms a token: it answers how many
# user messages it was shown and the last one ("2 msgs, last: hello"), or, asked to "go on", a long slow text
# for Ctrl-C to interrupt.
_SCRIPTED_CLI = """
import sys, time
import nanochat.engine as engine
from nanochat.chat_cli import main
from nanochat.tokenizer import SPECIAL_TOKENS, Tokenizer

tok = Tokenizer.byte_level()  # the test model's
special = {name[2:-2]: tok.encode_special(name) for name in SPECIAL_TOKENS}

def scripted(self, prompts, num_samples=1, max_tokens=256, **kw):
    prompt = prompts[0]
    starts = [i for i, t in enumerate(prompt) if t == special["user_start"]]
    last = bytes(prompt[starts[-1] + 1: prompt.index(special["user_end"], starts[-1])]).decode()
    text = "." * 100 if last == "go on" else f"{len(starts)} msgs, last: {last}"
    for t in [*text.encode()[:max_tokens], special["assistant_end"]]:
        time.sleep(0.05 if last == "go on" else 0.01)
        yield [t] * num_samples, [1] * num_samples

engine.Engine.generate = scripted
sys.exit(main(sys.argv[1:]))
"""
LEFT, UP = "\x1b[D", "\x1b[A"


class Terminal:
    """A child process on a pseudo-terminal: `send` keys, `expect` output (read in order, like a person would)."""

    def __init__(self, argv):
        import pty

        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child
            os.chdir(ROOT)
            os.execve(sys.executable, [sys.executable, *argv], {**os.environ, "TERM": "dumb"})
        self.raw, self.pos = b"", 0

    @property
    def seen(self) -> str:
        return self.raw.decode("utf-8", "replace").replace("\r\n", "\n")

    def send(self, keys: str) -> None:
        import time

        time.sleep(0.1)  # as pexpect does: a program that just printed its prompt may not be reading yet
        os.write(self.fd, keys.encode())

    def _read(self, timeout: float) -> bool:
        import select

        if not select.select([self.fd], [], [], max(0.0, timeout))[0]:
            return False
        try:
            chunk = os.read(self.fd, 4096)
        except OSError:  # the child is gone
            chunk = b""
        self.raw += chunk
        return bool(chunk)

    def expect(self, text: str, timeout: float = 30.0) -> int:
        """Read until `text` appears after the last match; return the position right after it."""
        import time

        deadline = time.monotonic() + timeout
        while self.seen.find(text, self.pos) < 0:
            if not self._read(deadline - time.monotonic()):
                raise AssertionError(f"no {text!r} in the terminal; it shows:\n{self.seen[-2000:]}")
        self.pos = self.seen.find(text, self.pos) + len(text)
        return self.pos

    def answer(self, ending: str) -> str:
        """The text between the next "nanochat: " and `ending`."""
        start = self.expect("nanochat: ")
        end = self.expect(ending) - len(ending)
        return self.seen[start: end]

    def wait(self) -> int:
        import time

        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                while self._read(0.1):
                    pass
                self.pid = 0
                return os.waitstatus_to_exitcode(status)
            time.sleep(0.05)
        raise AssertionError("the chat did not exit")


@pytest.mark.skipif(sys.platform == "win32", reason="pseudo-terminals are POSIX")
def test_terminal_line_editing_history_ctrl_c_and_ctrl_d(model_dir):
    term = Terminal(["-c", _SCRIPTED_CLI, f"ckpt={model_dir}", "max_tokens=100"])
    try:
        term.expect("You: ")
        term.send("hallo" + LEFT * 3 + "\x7f" + "e\r")  # edited in place to "hello"
        assert term.answer("\n\nYou: ") == "1 msgs, last: hello"
        term.send(UP + "\r")  # the previous message again, from the history
        assert term.answer("\n\nYou: ") == "2 msgs, last: hello"
        # Ctrl-C during an answer stops it; the chat goes on, the stopped turn in it
        term.send("go on\r")
        start = term.expect("nanochat: .")
        term.send("\x03")
        end = term.expect(" [stopped]\n\nYou: ") - len(" [stopped]\n\nYou: ")
        stopped = term.seen[start - 1: end].replace("^C", "")  # the terminal's echo of the key
        assert 0 < len(stopped) < 100 and set(stopped) == {"."}
        term.send("ok\r")
        assert term.answer("\n\nYou: ") == "4 msgs, last: ok"
        # Ctrl-C at the prompt drops the line being typed; Ctrl-D ends the chat on a fresh line
        term.send("never sent")
        term.send("\x03")
        term.expect("(Ctrl-C again or Ctrl-D to quit)\n\nYou: ")
        term.send("\x04")
        assert term.wait() == 0
        assert term.seen.endswith("quit)\n\nYou: \n"), term.seen[-200:]
    finally:
        if term.pid:
            os.kill(term.pid, 9)
            os.waitpid(term.pid, 0)


def test_calculator_use_is_shown_readably_and_kept_as_parts(monkeypatch):
    from types import SimpleNamespace

    from nanochat import chat_cli, serving
    from nanochat.tokenizer import Tokenizer

    pieces = [("text", "Let me see. "), ("text", ""), ("python", "12*"), ("python", "12"), ("python_output", "144"),
              ("text", " So: 144.")]
    def stream_rows(*args, **kwargs):  # the serving stream's Deltas: text, with the part it belongs to
        yield from (SimpleNamespace(kind=kind, text=text) for kind, text in pieces)
    monkeypatch.setattr(serving, "stream_rows", stream_rows)
    session = chat_cli.ChatSession(None, Tokenizer.byte_level(), 256, serving.SamplingParams(max_tokens=32))
    out = io.StringIO()
    session.reply("what is 12*12?", out)
    assert out.getvalue() == "Let me see. [calculator: 12*12 = 144] So: 144."
    assert session.messages[-1]["content"] == [
        {"type": "text", "text": "Let me see. "}, {"type": "python", "text": "12*12"},
        {"type": "python_output", "text": "144"}, {"type": "text", "text": " So: 144."}]
    # an answer stopped inside the tool call still shows a closed bracket and keeps a valid message
    view = chat_cli.AnswerView(out := io.StringIO())
    view.write("text", "Hm ")
    view.write("python", "2+")
    view.close()
    assert out.getvalue() == "Hm [calculator: 2+]"
    reply = Reply()
    reply.add("text", "Hm ")
    reply.add("python", "  ")
    assert reply.content() == "Hm "


def test_ctrl_c_twice_at_the_prompt_ends_the_chat(monkeypatch):
    from types import SimpleNamespace

    from nanochat import chat_cli

    keys = iter(["hi\n", KeyboardInterrupt, KeyboardInterrupt, "never read\n"])

    def read():
        key = next(keys)
        if key is KeyboardInterrupt:
            raise key
        return key
    monkeypatch.setattr(chat_cli, "_line_reader", lambda stdin, out: read)
    session = SimpleNamespace(reply=lambda text, out: out.write(f"echo {text}"))
    out = io.StringIO()
    chat_cli.interactive(session, SimpleNamespace(id="m", size="1K", stage="sft"), stdin=io.StringIO(), out=out)
    assert out.getvalue().endswith("nanochat: echo hi\n\n(Ctrl-C again or Ctrl-D to quit)\n\n")
    assert next(keys) == "never read\n"
