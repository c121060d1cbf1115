"""Chat with a trained model in the terminal: interactive multi-turn, or one-shot with a prompt.

    python -m nanochat.chat_cli                              # newest trained model (rl, sft, mid, then base)
    python -m nanochat.chat_cli "Why is the sky blue?"       # one question, one answer, exit
    nanochat-chat ckpt=latest:sft temperature=0.6 top_k=50 prompt="What's 2+2?"

The one idea: the CLI is the server's generation path without the web — the same prompt rendering (user
text never becomes special tokens), the same context cap and the same character-safe streaming.

In a terminal the prompt has readline line editing and history (arrow keys, Up for earlier messages). Ctrl-C
during an answer stops it and the chat goes on; Ctrl-C at the prompt drops the line, twice in a row ends the
chat, as do Ctrl-D and 'quit'. Calculator use is shown as `[calculator: 12*12 = 144]`.

Settings are `key=value` like every nanochat command (`--help` lists them). `prompt` and `system` are free
text, so they are taken verbatim (commas, quotes and `=` included) rather than read as override values.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass, replace
from typing import Optional

from nanochat.chat_render import Reply
from nanochat.common import NanochatError, knob

QUIT = {"quit", "exit", "/quit", "/exit"}
CLEAR = {"clear", "/clear"}
TEXT_KEYS = ("prompt", "system")  # free text: taken verbatim, never parsed as an override value


@dataclass
class ChatSettings:
    """`python -m nanochat.chat_cli` / `nanochat-chat`."""

    prompt: Optional[str] = knob(None, "ask one question, print the answer and exit (also: the first argument)")
    ckpt: Optional[str] = knob(None, "model folder, .ckpt, or latest:<stage> (default: newest of rl/sft/mid/base)")
    temperature: float = knob(0.6, "sampling temperature (0: greedy)", low=0)
    top_k: int = knob(50, "sample from the k likeliest tokens (0: off)", low=0)
    max_tokens: int = knob(512, "most new tokens per answer", low=1)
    seed: Optional[int] = knob(None, "sampling seed (default: random per answer)")
    system: Optional[str] = knob(None, "a system message for the whole chat")
    device: str = knob("auto", "auto, cpu, cuda, cuda:1 or mps")


def split_text(argv: list[str]) -> tuple[list[str], dict[str, str]]:
    """(the other arguments, {key: text}) with `prompt=`/`system=` and a leading bare prompt taken verbatim.

    A first argument is the prompt unless it looks like a setting (`name=...`) or an option (`-...`).
    """
    rest, text = [], {}
    for i, arg in enumerate(argv):
        key, sep, value = arg.partition("=")
        if sep and key in TEXT_KEYS:
            text[key] = value
        elif i == 0 and not arg.startswith("-") and not (sep and key.isidentifier()) and arg != "help":
            text["prompt"] = arg
        else:
            rest.append(arg)
    return rest, text


class AnswerView:
    """Writes an answer to `out` as it streams, readably (nanochat.chat_render.Reply: tool use as
    `[calculator: 12*12 = 144]`, never as special tokens), and keeps it as parts."""

    def __init__(self, out):
        self.out, self.reply = out, Reply()

    def write(self, kind: str, text: str) -> None:
        self.out.write(self.reply.add(kind, text))
        self.out.flush()

    def close(self) -> None:
        self.out.write(self.reply.close())
        self.out.flush()


class ChatSession:
    """A conversation with one model: `reply(text, out)` streams the answer to `out` and remembers it.

    Ctrl-C (KeyboardInterrupt) during an answer stops it; what was said so far stays in the conversation and
    the interrupt is raised again for the caller to decide (the interactive loop carries on, one-shot exits).
    """

    def __init__(self, engine, tokenizer, context: int, sampling, system: str | None = None):
        self.engine, self.tokenizer, self.context, self.sampling = engine, tokenizer, context, sampling
        self.system = system
        self.messages: list[dict] = []

    def clear(self) -> None:
        self.messages = []

    def reply(self, text: str, out):
        from nanochat.serving import Limits, check_conversation, check_sampling, render_prompt, stream_rows

        head = [{"role": "system", "content": self.system}] if self.system else []
        conv = check_conversation(head + self.messages + [{"role": "user", "content": text}], Limits())
        p = check_sampling(replace(self.sampling, n=1, stop=()), Limits())
        prompt, p.max_tokens = render_prompt(self.tokenizer, conv, self.context, p.max_tokens)
        view = AnswerView(out)
        stream = stream_rows(self.engine, self.tokenizer, prompt, p)
        try:
            for delta in stream:
                view.write(getattr(delta, "kind", "text"), delta.text)
        finally:  # also on Ctrl-C: stop the engine, keep what was said
            stream.close()
            view.close()
            answer = view.reply.content()
            self.messages += [{"role": "user", "content": text}, {"role": "assistant", "content": answer or " "}]
        return answer


def load_session(settings: ChatSettings) -> tuple[ChatSession, object]:
    from nanochat.serving import SamplingParams, load_replicas, pick_devices

    engines, tokenizer, info = load_replicas(settings.ckpt, pick_devices(settings.device, 1))
    sampling = SamplingParams(temperature=settings.temperature, top_k=settings.top_k,
                              max_tokens=settings.max_tokens, seed=settings.seed)
    return ChatSession(engines[0], tokenizer, info.sequence_len, sampling, settings.system), info


def _line_reader(stdin, out):
    """A function returning the next line (without its newline), raising EOFError at the end.

    On a terminal: `input()` with readline's line editing and history (arrow keys, Ctrl-A/E, Up for earlier
    messages) where Python has readline."""
    if stdin is sys.stdin and stdin.isatty():
        try:
            import readline  # noqa: F401  (importing it gives input() line editing and history)
        except ImportError:
            pass

        def read() -> str:
            out.write("\n")
            out.flush()
            return input("You: ")
        return read

    def read_plain() -> str:
        line = stdin.readline()
        if not line:
            raise EOFError
        return line
    return read_plain


def interactive(session: ChatSession, info, stdin=None, out=None) -> None:
    """Read messages until 'quit', Ctrl-D or Ctrl-C twice at the prompt.

    Ctrl-C during an answer stops that answer (the conversation goes on); Ctrl-C at the prompt drops the line
    being typed, and a second one in a row ends the chat. Ctrl-D at the prompt ends it on a fresh line."""
    stdin, out = stdin or sys.stdin, out or sys.stdout
    read = _line_reader(stdin, out)
    out.write(f"nanochat · {info.id} ({info.size} parameters, stage {info.stage})\n"
              "Type a message; 'clear' starts over; 'quit', Ctrl-D or Ctrl-C twice ends. "
              "Ctrl-C stops an answer.\n")
    interrupted = False
    while True:
        try:
            line = read()
        except EOFError:
            if stdin.isatty():
                out.write("\n")  # the prompt's line ends before the shell's prompt
            break
        except KeyboardInterrupt:
            if interrupted:
                out.write("\n")
                break
            out.write("\n(Ctrl-C again or Ctrl-D to quit)\n")
            interrupted = True
            continue
        interrupted = False
        text = line.strip()
        if not text:
            continue
        if text.lower() in QUIT:
            break
        if text.lower() in CLEAR:
            session.clear()
            out.write("(conversation cleared)\n")
            continue
        out.write("nanochat: ")
        try:
            session.reply(text, out)
        except NanochatError as e:  # e.g. the conversation outgrew the context: say so, keep the session
            out.write(f"[{e}; type 'clear' to start over]")
        except KeyboardInterrupt:
            out.write(" [stopped]")
        out.write("\n")
        out.flush()


def chat(settings: ChatSettings) -> int:
    """One answer to `settings.prompt`, else an interactive session on stdin; 130 after Ctrl-C."""
    try:
        session, info = load_session(settings)
        if settings.prompt is not None:
            session.reply(settings.prompt, sys.stdout)
            sys.stdout.write("\n")
        else:
            interactive(session, info)
    except KeyboardInterrupt:
        sys.stdout.write("\n")
        return 130
    return 0


def main(argv=None) -> int:
    """`key=value` settings (see ChatSettings); a bad one is one `error:` line and exit code 1."""
    from nanochat.config.command import run_command

    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    rest, text = split_text(list(sys.argv[1:] if argv is None else argv))
    return run_command(ChatSettings, rest, lambda settings: chat(replace(settings, **text)),
                       prog="python -m nanochat.chat_cli", positional="prompt",
                       summary="Chat with a trained nanochat model (interactive, or one answer with a prompt).")


if __name__ == "__main__":
    raise SystemExit(main())
