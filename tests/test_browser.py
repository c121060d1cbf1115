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
