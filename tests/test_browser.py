"""The web UI in a real headless Chromium (Debian's /usr/bin/chromium driven by Playwright).

Install both with `bash scripts/install_browser.sh`; the test skips only when no browser can be had.
"""
from __future__ import annotations

import os
import time

import pytest

from tests.serve_helpers import ScriptedEngine, export_tiny_model

CHROMIUM = os.environ.get("NANOCHAT_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync"]
REPLY = "Sunlight scatters off air molecules, and blue light scatters the most."

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright not installed (scripts/install_browser.sh)")
if not os.access(CHROMIUM, os.X_OK):
    pytest.skip(f"no browser at {CHROMIUM} (scripts/install_browser.sh installs one)", allow_module_level=True)


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        yield b
        b.close()


def _serve_ui(tmp_path, delay: float):
    """A real model folder (for the name, stage and size shown) whose engine replays REPLY slowly."""
    from nanochat.server import create_app
    from nanochat.serving import Limits, ModelPool, SamplingParams, load_replicas

    engines, tok, info = load_replicas(str(export_tiny_model(tmp_path / "model")), ["cpu"])
    pool = ModelPool([ScriptedEngine(tok, REPLY, delay)], tok)
    return create_app(pool, info, Limits(), SamplingParams(max_tokens=128)), info


def test_page_streams_a_reply(browser, tmp_path):
    from nanochat.server import BackgroundServer

    app, info = _serve_ui(tmp_path, delay=0.03)
    with BackgroundServer(app) as url:
        page = browser.new_page(viewport={"width": 1100, "height": 860})
        page.goto(f"{url}/", timeout=60_000)
        header = page.locator("#nc-header")
        header.wait_for(timeout=60_000)
        assert info.id in header.inner_text() and "sft" in header.inner_text()
        box = page.locator("#nc-input textarea")
        box.fill("Why is the sky blue?")
        box.press("Enter")
        bot = page.locator('[data-testid="bot"]').last
        bot.wait_for(timeout=30_000)
        seen, deadline = [], time.monotonic() + 30
        while time.monotonic() < deadline:
            text = bot.inner_text().strip()
            if not seen or text != seen[-1]:
                seen.append(text)
            if text == REPLY:
                break
            time.sleep(0.02)
        assert seen[-1] == REPLY, seen
        partial = [t for t in seen if t and t != REPLY]
        assert partial and all(REPLY.startswith(t) for t in partial), seen  # it grew in place: streamed
        assert page.locator('[data-testid="user"]').last.inner_text().strip() == "Why is the sky blue?"
        page.close()


class TokenEngine:
    """Engine stand-in that replays fixed token ids (special tokens included) and records every prompt."""

    def __init__(self, ids, delay: float = 0.0):
        self.ids, self.delay, self.prompts = list(ids), delay, []

    def generate(self, prompts, num_samples=1, max_tokens=256, **kw):
        self.prompts.append(list(prompts[0]))
        for tok in self.ids[:max_tokens]:
            time.sleep(self.delay)
            yield [tok] * num_samples, [1] * num_samples


def _tool_reply(tok):
    sp = tok.encode_special
    return (tok.encode("Let me check.") + [sp("<|python_start|>")] + tok.encode("12*12") + [sp("<|python_end|>"),
            sp("<|output_start|>")] + tok.encode("144") + [sp("<|output_end|>")] + tok.encode(" It is 144.")
            + [sp("<|assistant_end|>")])


def _send(page, text):
    box = page.locator("#nc-input textarea")
    sent = page.locator(".nc-user").count()
    box.fill(text)
    box.press("Enter")
    # the turn is over once the message shows and the stop button (there while a reply streams) is gone
    page.wait_for_function(f"() => document.querySelectorAll('.nc-user').length > {sent} && "
                           "!document.querySelector('#nc-input .stop-button')", timeout=20_000)
    assert box.is_enabled() and box.is_editable()
    return page.locator("#nc-chat").inner_text()


def test_long_chat_tool_calls_and_refusals_never_lock_the_page(browser, tmp_path):
    from nanochat.server import BackgroundServer, create_app
    from nanochat.serving import Limits, ModelPool, SamplingParams, load_replicas

    _engines, tok, info = load_replicas(str(export_tiny_model(tmp_path / "model")), ["cpu"])
    engine = TokenEngine(_tool_reply(tok), delay=0.002)
    app = create_app(ModelPool([engine], tok), info, Limits(), SamplingParams(max_tokens=128))
    with BackgroundServer(app) as url:
        page = browser.new_page(viewport={"width": 1100, "height": 860})
        page.goto(f"{url}/", timeout=60_000)
        page.locator("#nc-input textarea").wait_for(timeout=60_000)

        typed = "**not bold** <b>x</b> $y$ a_b_c\n\n  two"
        chat = _send(page, typed)
        assert page.locator(".nc-user").last.inner_text() == typed  # as typed: no markdown, HTML or LaTeX
        assert "<|" not in chat and "It is 144." in chat
        tool = page.locator("#nc-chat").get_by_text("calculator: 12*12 = 144")
        assert tool.count() == 1
        # the reply went back to the model as its own tool call, special tokens and all
        _send(page, "And 13*13?")
        sp = tok.encode_special
        assert engine.prompts[-1].count(sp("<|python_start|>")) == 1
        assert engine.prompts[-1].count(sp("<|output_end|>")) == 1

        for turn in range(3):  # a few more turns outgrow the 128-token context: old ones are dropped
            chat = _send(page, f"Tell me more, part {turn}.")
        assert "Older turns were dropped" in chat
        assert all(len(p) < info.sequence_len for p in engine.prompts)
        calls = len(engine.prompts)

        chat = _send(page, "a very long message " * 12)  # more than the whole context on its own
        assert "cannot be answered" in chat and len(engine.prompts) == calls
        _send(page, "Still there?")  # and the chat goes on
        assert len(engine.prompts) == calls + 1
        assert page.locator(".nc-notice").count() >= 2

        engine.delay = 0.3  # a slow reply, stopped halfway: the box is back at once and the chat goes on
        box = page.locator("#nc-input textarea")
        box.fill("Take your time.")
        box.press("Enter")
        page.locator("#nc-input .stop-button").click(timeout=10_000)
        page.wait_for_function("() => !document.querySelector('#nc-input .stop-button')", timeout=5_000)
        engine.delay = 0.002
        assert "Let me check." in _send(page, "Go on.").split("Go on.")[-1]

        page.locator("text=Sampling: temperature").click()  # a typed-in max tokens beyond the slider
        number = page.locator("#nc-max-tokens input[type=number]")
        number.fill("99999")
        assert "Let me check." in _send(page, "One more.").split("One more.")[-1]
        assert number.input_value() == "128"
        page.close()
