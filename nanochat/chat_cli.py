"""Chat with a trained model in the terminal: interactive multi-turn, or one-shot with -p.

    python -m nanochat.chat_cli                          # newest trained model (rl, sft, mid, then base)
    python -m nanochat.chat_cli -p "Why is the sky blue?"
    nanochat-chat --ckpt latest:sft --temperature 0.6 --top-k 50

The one idea: the CLI is the server's generation path without the web — the same prompt rendering (user
text never becomes special tokens), the same context cap and the same character-safe streaming.
"""
from __future__ import annotations

import argparse
import os
import sys

from nanochat.common import NanochatError

QUIT = {"quit", "exit", "/quit", "/exit"}
CLEAR = {"clear", "/clear"}


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="nanochat-chat", description="Chat with a trained nanochat model.")
    ap.add_argument("-p", "--prompt", help="ask one question, print the answer and exit")
    ap.add_argument("--ckpt", default=None,
                    help="model folder, .ckpt, or latest:<stage> (default: newest of rl/sft/mid/base)")
    ap.add_argument("-t", "--temperature", type=float, default=0.6)
    ap.add_argument("-k", "--top-k", type=int, default=50, help="0 = off")
    ap.add_argument("--max-tokens", type=int, default=512, help="most new tokens per answer")
    ap.add_argument("--seed", type=int, default=None, help="sampling seed (default: random per answer)")
    ap.add_argument("--system", default=None, help="a system message for the whole chat")
    ap.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    return ap.parse_args(argv)


class ChatSession:
    """A conversation with one model: `reply(text, out)` streams the answer to `out` and remembers it."""

    def __init__(self, engine, tokenizer, context: int, sampling, system: str | None = None):
        self.engine, self.tokenizer, self.context, self.sampling = engine, tokenizer, context, sampling
        self.system = system
        self.messages: list[dict] = []

    def clear(self) -> None:
        self.messages = []

    def reply(self, text: str, out) -> str:
        from dataclasses import replace

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


def load_session(args) -> tuple[ChatSession, object]:
    from nanochat.serving import SamplingParams, load_replicas, pick_devices

    engines, tokenizer, info = load_replicas(args.ckpt, pick_devices(args.device, 1))
    sampling = SamplingParams(temperature=args.temperature, top_k=args.top_k, max_tokens=args.max_tokens,
                              seed=args.seed)
    return ChatSession(engines[0], tokenizer, info.sequence_len, sampling, args.system), info


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


def main(argv=None) -> int:
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    args = parse_args(argv)
    try:
        session, info = load_session(args)
        if args.prompt is not None:
            session.reply(args.prompt, sys.stdout)
            sys.stdout.write("\n")
        else:
            interactive(session, info)
    except NanochatError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        sys.stdout.write("\n")
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
