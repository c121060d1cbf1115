"""Benchmark: the chat server under 32 concurrent streaming clients, one-request slots vs continuous batching;
and the web-UI screenshot.

The server is the real entry point (`serve.py`, its own process, 127.0.0.1, a free port) serving a random model
of the d4 shape (4 layers, 256 wide, context 256; byte-level vocabulary) or `--ckpt`. Each client is a closed
loop: send a streaming /v1/chat/completions request, read the SSE stream to [DONE], send the next, until
`--duration` is up; requests in flight then finish (all answered). Time to first token (TTFT) = request sent ->
first content chunk. The same load runs against `batching=false max_concurrency=--slots` (one request per
slot, each in its own thread: the server before continuous batching) and `batching=true
max_concurrency=--rows` (one decode loop per replica), then the ratios. Per setting: p50/p95 TTFT, p50
per-request decode speed, aggregate completion tokens/s, errors (non-200, error events, missing [DONE],
timeouts) — errors must be 0.

    python bench/serve.py                           # 32 clients, 15 s per setting, 4 slots vs 32 rows
    python bench/serve.py --quick                   # 8 s per setting
    python bench/serve.py --screenshot docs/webui.png --screenshot-only
The screenshot trains a toy chat model for a few seconds (it memorises a handful of conversations, so its
replies are readable), serves it and photographs the page in headless Chromium after one streamed reply.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
PROMPTS = ["Why is the sky blue?", "Tell me a joke about GPUs.", "What is 7 * 6?", "Héllo, wie geht's? 你好"]


def tiny_model(directory: Path, depth: int = 4, width: int = 256, seq: int = 256) -> Path:
    import torch

    from nanochat.checkpoint import export_model
    from nanochat.gpt import GPT, GPTConfig
    from nanochat.tokenizer import Tokenizer

    torch.manual_seed(0)
    heads = max(1, width // 64)
    model = GPT(GPTConfig(sequence_len=seq, vocab_size=265, n_layer=depth, n_head=heads, n_kv_head=heads,
                          n_embd=width))
    model.init_weights()
    with torch.no_grad():  # away from the zero-initialised head, or every token is equally likely
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    return export_model(model, Tokenizer.byte_level(), directory, meta={"stage": "sft"})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """`python serve.py ...` on 127.0.0.1; stopped (terminate, then kill) when the block ends."""

    def __init__(self, model: Path, slots: int, ui: bool = False, max_tokens: int = 64, batching: bool = True):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.cmd = [sys.executable, str(ROOT / "serve.py"), f"ckpt={model}", f"port={self.port}", "device=cpu",
                    f"max_concurrency={slots}", f"ui={str(ui).lower()}", "log_level=warning",
                    f"defaults_sampling.max_tokens={max_tokens}", f"batching={str(batching).lower()}"]

    def __enter__(self) -> str:
        import httpx

        self.proc = subprocess.Popen(self.cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     env={**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"})
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"server exited: {self.proc.stderr.read().decode()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return self.url
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise SystemExit("server did not come up in 120 s")

    def __exit__(self, *exc):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


async def client(http, url: str, stop_at: float, i: int, max_tokens: int, out: list, errors: list):
    n = 0
    while time.monotonic() < stop_at:
        body = {"messages": [{"role": "user", "content": PROMPTS[(i + n) % len(PROMPTS)]}], "stream": True,
                "max_tokens": max_tokens, "temperature": 1.0, "seed": i * 1000 + n,
                "stream_options": {"include_usage": True}}
        n += 1
        t0 = time.perf_counter()
        ttft, tokens, done = None, 0, False
        try:
            async with http.stream("POST", f"{url}/v1/chat/completions", json=body) as r:
                if r.status_code != 200:
                    errors.append(f"HTTP {r.status_code}")
                    continue
                async for line in r.aiter_lines():
                    if not line.startswith("data: "):
                        continue
                    data = line[6:]
                    if data == "[DONE]":
                        done = True
                        break
                    obj = json.loads(data)
                    if "error" in obj:
                        errors.append(obj["error"]["message"])
                        break
                    if obj.get("usage"):
                        tokens = obj["usage"]["completion_tokens"]
                    elif ttft is None and obj["choices"] and obj["choices"][0]["delta"].get("content"):
                        ttft = time.perf_counter() - t0
        except Exception as e:  # timeouts, resets: all count
            errors.append(f"{type(e).__name__}: {e}")
            continue
        if not done:
            errors.append("stream ended without [DONE]")
            continue
        total = time.perf_counter() - t0
        out.append({"ttft": ttft if ttft is not None else total, "total": total, "tokens": tokens})


async def load_test(url: str, clients: int, duration: float, max_tokens: int) -> dict:
    import httpx

    results, errors = [], []
    limits = httpx.Limits(max_connections=clients + 4, max_keepalive_connections=clients + 4)
    async with httpx.AsyncClient(timeout=httpx.Timeout(300.0), limits=limits) as http:
        start = time.monotonic()
        await asyncio.gather(*(client(http, url, start + duration, i, max_tokens, results, errors)
                               for i in range(clients)))
        wall = time.monotonic() - start
    ttft = sorted(r["ttft"] for r in results)
    decode = [r["tokens"] / max(r["total"] - r["ttft"], 1e-9) for r in results if r["tokens"] > 1]

    def pct(xs, q):
        return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")

    return {"requests": len(results), "errors": len(errors), "first_errors": errors[:3], "wall_s": wall,
            "ttft_p50_ms": 1000 * pct(ttft, 0.50), "ttft_p95_ms": 1000 * pct(ttft, 0.95),
            "decode_tok_s_p50": statistics.median(decode) if decode else float("nan"),
            "aggregate_tok_s": sum(r["tokens"] for r in results) / wall}


# -- screenshot ----------------------------------------------------------------------------------------------
TOY_CHATS = [
    ("Why is the sky blue?", "Sunlight is made of every colour. Air molecules scatter short blue waves much more "
                             "than red ones, so blue light reaches your eyes from all over the sky."),
    ("Who are you?", "I am nanochat, a tiny language model trained from scratch on one computer."),
    ("What is 12 * 37? Show your steps.", "12 * 37 = 12 * 30 + 12 * 7 = 360 + 84 = 444."),
    ("Write a haiku about a small language model.", "Few weights, bright and small / I guess the next byte you "
                                                    "type / and sometimes I'm right."),
]


def toy_chat_model(directory: Path, steps: int = 400) -> Path:
    """A depth-2 byte-level model that memorises TOY_CHATS (assistant tokens only), for a readable screenshot."""
    import torch

    from nanochat.chat import render_conversation
    from nanochat.checkpoint import export_model
    from nanochat.gpt import GPT, GPTConfig
    from nanochat.tokenizer import Tokenizer

    torch.manual_seed(0)
    tok = Tokenizer.byte_level()
    model = GPT(GPTConfig(sequence_len=256, vocab_size=265, n_layer=2, n_head=2, n_kv_head=2, n_embd=128))
    model.init_weights()
    rows = []
    for q, a in TOY_CHATS:
        ids, mask = render_conversation(tok, {"messages": [{"role": "user", "content": q},
                                                           {"role": "assistant", "content": a}]})
        targets = [t if m else -1 for t, m in zip(ids[1:], mask[1:])]
        pad = 256 - len(targets)
        rows.append((ids[:-1] + [0] * pad, targets + [-1] * pad))
    x = torch.tensor([r[0] for r in rows])
    y = torch.tensor([r[1] for r in rows])
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(steps):
        loss = model(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    print(f"toy chat model: final loss {loss.item():.4f}")
    return export_model(model, tok, directory, meta={"stage": "sft"})


def screenshot(model: Path, path: Path) -> None:
    from playwright.sync_api import sync_playwright

    args = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync"]
    with ServerProcess(model, slots=1, ui=True, max_tokens=256) as url, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=args)
        page = browser.new_page(viewport={"width": 1100, "height": 900}, device_scale_factor=1)
        page.goto(f"{url}/", timeout=120_000)
        page.locator("#nc-input textarea").wait_for(timeout=120_000)
        for n, (q, _) in enumerate(TOY_CHATS[:2], start=1):
            page.locator("#nc-input textarea").fill(q)
            page.locator("#nc-input textarea").press("Enter")
            page.wait_for_function("n => document.querySelectorAll('[data-testid=\"bot\"]').length >= n", arg=n,
                                   timeout=120_000)
            bot, last, since = page.locator('[data-testid="bot"]').nth(n - 1), None, time.monotonic()
            while time.monotonic() - since < 2.0:  # the reply is done once it stops growing
                text = bot.inner_text()
                if text != last or not text.strip():
                    last, since = text, time.monotonic()
                time.sleep(0.1)
        path.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(path))
        print(f"screenshot: {path}")
        browser.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--duration", type=float, default=15.0, help="seconds of load per setting")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--slots", type=int, default=4, help="max_concurrency of the one-request-per-slot server")
    ap.add_argument("--rows", type=int, default=32, help="max_concurrency (rows) of the batching server")
    ap.add_argument("--ckpt", type=Path, default=None, help="a model folder (default: a random d4-shaped model)")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--screenshot", type=Path, default=None, help="also save a web-UI screenshot here")
    ap.add_argument("--screenshot-only", action="store_true")
    args = ap.parse_args()
    if args.quick:
        args.duration = 8.0
    with tempfile.TemporaryDirectory() as tmp:
        if not args.screenshot_only:
            model = args.ckpt or tiny_model(Path(tmp) / "d4")
            runs = {}
            for name, batching, conc in (("slots", False, args.slots), ("batched", True, args.rows)):
                with ServerProcess(model, conc, max_tokens=args.max_tokens, batching=batching) as url:
                    r = runs[name] = asyncio.run(load_test(url, args.clients, args.duration, args.max_tokens))
                print(f"serve[{args.clients} clients, batching={str(batching).lower()}, max_concurrency={conc}]: "
                      f"{r['requests']} requests in {r['wall_s']:.1f} s, errors {r['errors']}, TTFT p50 "
                      f"{r['ttft_p50_ms']:.0f} ms / p95 {r['ttft_p95_ms']:.0f} ms, decode p50 "
                      f"{r['decode_tok_s_p50']:.0f} tok/s per stream, aggregate {r['aggregate_tok_s']:.0f} tok/s"
                      + (f"  {r['first_errors']}" if r["errors"] else ""), flush=True)
            old, new = runs["slots"], runs["batched"]
            speed = new["aggregate_tok_s"] / old["aggregate_tok_s"]
            ttft = new["ttft_p95_ms"] / old["ttft_p95_ms"]
            print(f"batched / slots: aggregate tokens/s {speed:.2f}x (goal >= 3x), TTFT p95 {ttft:.2f}x (goal <= 0.33x), "
                  f"TTFT p50 {new['ttft_p50_ms'] / old['ttft_p50_ms']:.2f}x", flush=True)
        if args.screenshot:
            screenshot(toy_chat_model(Path(tmp) / "toy"), args.screenshot)


if __name__ == "__main__":
    main()
