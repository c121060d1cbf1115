"""Chat with a trained model in the terminal: interactive multi-turn, or one-shot with a prompt.

    python -m nanochat.chat_cli                              # newest trained model (rl, sft, mid, then base)
    python -m nanochat.chat_cli "Why is the sky blue?"       # one question, one answer, exit
    nanochat-chat ckpt=latest:sft temperature=0.6 top_k=50 prompt="What's 2+2?"

The one idea: the CLI is the server's generation path without the web — the same prompt rendering (user
text never becomes special tokens), the same context cap and the same character-safe streaming.

Settings are `key=value` like every nanochat command (`--help` lists them). `prompt` and `system` are free
text, so they are taken verbatim (commas, quotes and `=` included) rather than read as override values.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass, replace
from typing import Optional

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


class ChatSession:
    """A conversation with one model: `reply(text, out)` streams the answer to `out` and remembers it."""

    def __init__(self, engine, tokenizer, context: int, sampling, system: str | None = None):
        self.engine, self.tokenizer, self.context, self.sampling = engine, tokenizer, context, sampling
        self.system = system
        self.messages: list[dict] = []

    def clear(self) -> None:
        self.messages = []

    def reply(self, text: str, out) -> str:
        from nanochat.serving import Limits, check_conversation, check_sampling, render_prompt, stream_rows

        head = [{"role": "system", "content": self.system}] if self.system else []
        conv = check_conversation(head + self.messages + [{"role": "user", "content": text}], Limits())
        p = check_sampling(replace(self.sampling, n=1, stop=()), Limits())
        prompt, p.max_tokens = render_prompt(self.tokenizer, conv, self.context, p.max_tokens)
        answer = []
        for delta in stream_rows(self.engine, self.tokenizer, prompt, p):
            answer.append(delta.text)
            out.write(delta.text)
            out.flush()
        answer = "".join(answer)
        self.messages += [{"role": "user", "content": text}, {"role": "assistant", "content": answer or " "}]
        return answer


def load_session(settings: ChatSettings) -> tuple[ChatSession, object]:
    from nanochat.serving import SamplingParams, load_replicas, pick_devices

    engines, tokenizer, info = load_replicas(settings.ckpt, pick_devices(settings.device, 1))
    sampling = SamplingParams(temperature=settings.temperature, top_k=settings.top_k,
                              max_tokens=settings.max_tokens, seed=settings.seed)
    return ChatSession(engines[0], tokenizer, info.sequence_len, sampling, settings.system), info


def interactive(session: ChatSession, info, stdin=None, out=None) -> None:
    stdin, out = stdin or sys.stdin, out or sys.stdout
    tty = stdin.isatty()
    out.write(f"nanochat · {info.id} ({info.size} parameters, stage {info.stage})\n"
              "Type a message; 'clear' starts over, 'quit' or Ctrl-D ends.\n")
    while True:
        if tty:
            out.write("\nYou: ")
            out.flush()
        line = stdin.readline()
        if not line:  # EOF
            break
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
