"""The Gradio chat page served at / beside the API: streaming replies, sampling controls, example prompts.

The one idea: the page is only another client of the same `ModelPool` as the API — same limits, same slots
and queue, same text streaming — so the browser can never do what an API caller could not. The chat lives in
a per-tab state of entries (the user's text, the model's reply as parts, notices); what the chat box shows is
derived from it, so a refusal or an error is one more notice in the chat, never a broken page, and a reply's
tool calls are shown readably yet sent back exactly as the model wrote them.
"""
from __future__ import annotations

import html
import logging
import math
import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402

from nanochat.chat_render import DoesNotFit, extend_reply, fence, fit_conversation, sendable, tool_title  # noqa: E402
from nanochat.common import NanochatError  # noqa: E402
from nanochat.serving import Limits, ModelInfo, ModelPool, SamplingParams, ServerBusy, check_sampling  # noqa: E402

log = logging.getLogger("nanochat.webui")

EXAMPLES = [
    "Why is the sky blue?",
    "Write a haiku about a small language model.",
    "What is 12 * 37? Show your steps.",
    "Explain recursion to a ten-year-old.",
]

# system fonts only: the page must render the same offline (no font CDN)
THEME = gr.themes.Soft(primary_hue="indigo", neutral_hue="slate", font=["system-ui", "Segoe UI", "sans-serif"],
                       font_mono=["ui-monospace", "Menlo", "monospace"])
CSS = """
.gradio-container { max-width: 960px !important; margin: 0 auto !important; }
#nc-header h1 { margin-bottom: 0.1em; }
#nc-header p { color: var(--body-text-color-subdued); margin-top: 0; }
.nc-badge { display: inline-block; padding: 2px 10px; margin-right: 6px; border-radius: 999px;
            background: var(--color-accent-soft); color: var(--color-accent); font-size: 0.85em; font-weight: 600; }
.nc-user { white-space: pre-wrap; }
.nc-notice { font-style: italic; color: var(--body-text-color-subdued); }
footer { display: none !important; }
"""


def header_html(info: ModelInfo) -> str:
    return (f"<div id='nc-header'><h1>nanochat</h1><p>A small ChatGPT trained from scratch. It makes things up; "
            f"treat its answers as a curiosity.</p>"
            f"<span class='nc-badge'>{info.id}</span><span class='nc-badge'>stage: {info.stage}</span>"
            f"<span class='nc-badge'>{info.size} parameters</span>"
            f"<span class='nc-badge'>{info.n_layer} layers · context {info.sequence_len}</span></div>")


# -- what the chat box shows -------------------------------------------------------------------------------
def user_html(text: str) -> str:
    """The user's text exactly as typed: escaped HTML on one line, so markdown never touches it."""
    return f"<div class='nc-user'>{html.escape(text).replace(chr(10), '&#10;')}</div>"


def notice_html(text: str) -> str:
    return f"<div class='nc-notice'>{html.escape(text)}</div>"


def reply_messages(parts: list[dict], streaming: bool = False) -> list[dict]:
    """One reply as chat-box messages: its text, and each calculator call as a collapsed block."""
    out = []
    for j, part in enumerate(parts):
        if part["type"] == "text":
            out.append({"role": "assistant", "content": part["text"]})
        elif part["type"] == "python":
            after = parts[j + 1] if j + 1 < len(parts) else None
            output = after["text"] if after and after["type"] == "python_output" else None
            body = fence(part["text"]) + ("" if output is None else "\n\nresult:\n\n" + fence(output))
            pending = streaming and j >= len(parts) - 2 and (after is None or after["type"] == "python_output")
            out.append({"role": "assistant", "content": body,
                        "metadata": {"title": tool_title(part["text"], output),
                                     "status": "pending" if pending else "done"}})
    return out


def chat_view(entries: list[dict], streaming: bool = False) -> list[dict]:
    out = []
    for i, e in enumerate(entries):
        if e["role"] == "user":
            out.append({"role": "user", "content": user_html(e["content"])})
        elif e["role"] == "assistant":
            out.extend(reply_messages(e["content"], streaming and i == len(entries) - 1))
        else:
            out.append({"role": "assistant", "content": notice_html(e["content"])})
    return out


# -- what the model sees -----------------------------------------------------------------------------------
def conversation_of(entries: list[dict], system: str) -> list[dict]:
    """Answered exchanges plus the newest user message, as nanochat.chat messages (notices and unanswered or
    empty turns left out; each reply as the parts the model wrote, tool calls included)."""
    messages = [{"role": "system", "content": system}] if system and system.strip() else []
    pending = None
    for e in entries:
        if e["role"] == "user":
            pending = e["content"]
        elif e["role"] == "assistant" and pending is not None:
            parts = sendable(e["content"])
            if any(p["type"] != "text" or p["text"].strip() for p in parts):
                messages += [{"role": "user", "content": pending}, {"role": "assistant", "content": parts}]
            pending = None
    if pending is not None:
        messages.append({"role": "user", "content": pending})
    return messages


def _clamp(value, lo, hi, default):
    try:
        value = float(value)
    except (TypeError, ValueError):
        return default
    return default if math.isnan(value) else min(max(value, lo), hi)


def ui_sampling(temperature, top_k, max_tokens, limits: Limits, defaults: SamplingParams,
                ceiling: int) -> SamplingParams:
    """The controls' values clamped to their sliders' ranges (a typed-in number can be anything)."""
    return check_sampling(SamplingParams(
        temperature=_clamp(temperature, 0.0, limits.max_temperature, defaults.temperature),
        top_k=int(_clamp(top_k, 0, limits.max_top_k, defaults.top_k or 0)),
        max_tokens=int(_clamp(max_tokens, 1, ceiling, min(defaults.max_tokens, ceiling)))), limits)


def make_respond(pool: ModelPool, info: ModelInfo, limits: Limits, defaults: SamplingParams, ceiling: int):
    """The chat turn: an async generator of (chat box, state, textbox update) that never raises."""
    context = info.sequence_len

    async def respond(message, entries, system, temperature, top_k, max_tokens):
        text = message if isinstance(message, str) else ""
        entries = list(entries or [])
        if not text.strip():
            yield chat_view(entries), entries, gr.Textbox(submit_btn=True, stop_btn=False)
            return
        entries.append({"role": "user", "content": text})
        yield chat_view(entries, True), entries, gr.Textbox(value="", submit_btn=False, stop_btn=True)
        reply = None
        try:
            if len(text) > limits.max_message_chars:
                raise DoesNotFit(f"Your message is {len(text)} characters; the limit is {limits.max_message_chars}. "
                                 "Please shorten it.")
            p = ui_sampling(temperature, top_k, max_tokens, limits, defaults, ceiling)
            messages = conversation_of(entries, system)
            ids, _kept, dropped = fit_conversation(pool.tokenizer, messages, context,
                                                   min(p.max_tokens, max(1, context // 4)),
                                                   limits.max_messages, limits.max_total_chars)
            before = max((e.get("dropped", 0) for e in entries if e["role"] == "notice"), default=0)
            if dropped > before:
                entries.append({"role": "notice", "dropped": dropped, "content":
                                f"Older turns were dropped: the conversation outgrew this model's {context}-token "
                                f"context, so it no longer sees the {dropped} oldest exchange"
                                f"{'s' if dropped > 1 else ''}."})
            p.max_tokens = min(p.max_tokens, context - len(ids))
            reply = {"role": "assistant", "content": []}
            entries.append(reply)
            async for delta in pool.generate(ids, p):
                extend_reply(reply["content"], getattr(delta, "kind", "text"), delta.text)
                yield chat_view(entries, True), entries, gr.skip()
        except ServerBusy:
            log.info("web UI: server busy")
            entries.append({"role": "notice", "content": "The server is busy; send your message again in a moment."})
        except NanochatError as e:  # a refusal: the user is told, the log gets one line
            log.info("web UI: refused: %s", e)
            entries.append({"role": "notice", "content": str(e)})
        except Exception as e:  # an engine failure: still a message in the chat, the page stays usable
            log.warning("web UI: generation failed: %s: %s", type(e).__name__, e)
            entries.append({"role": "notice", "content": f"The model failed while answering ({type(e).__name__}). "
                                                         "Try again."})
        if reply is not None and not reply["content"] and entries[-1] is not reply:
            entries.remove(reply)  # refused before any text: no empty bubble
        yield chat_view(entries), entries, gr.Textbox(submit_btn=True, stop_btn=False)

    return respond


def build_ui(pool: ModelPool, info: ModelInfo, limits: Limits, defaults: SamplingParams) -> gr.Blocks:
    ceiling = min(limits.max_tokens, info.sequence_len)
    respond = make_respond(pool, info, limits, defaults, ceiling)

    def idle():
        return gr.Textbox(submit_btn=True, stop_btn=False)

    def pick(evt: gr.SelectData):
        return evt.value["text"]

    def clamp_max_tokens(value):  # raw (preprocess=False): Gradio's own check would raise on a typed 99999
        clamped = int(_clamp(value, 16, ceiling, min(defaults.max_tokens, ceiling)))
        return gr.skip() if value == clamped else clamped

    with gr.Blocks(title=f"nanochat · {info.id}", fill_height=True) as demo:
        gr.HTML(header_html(info))
        entries = gr.State([])
        chatbot = gr.Chatbot(height=480, placeholder="Ask me anything — replies stream as they are sampled.",
                             buttons=["copy"], feedback_options=None, elem_id="nc-chat", show_label=False,
                             latex_delimiters=[], examples=[{"text": e} for e in EXAMPLES])
        textbox = gr.Textbox(placeholder="Message nanochat…", max_length=limits.max_message_chars,
                             submit_btn=True, stop_btn=False, elem_id="nc-input", show_label=False, lines=1)
        with gr.Accordion("Sampling: temperature, top-k, length, system prompt", open=False):
            temperature = gr.Slider(0.0, limits.max_temperature, value=defaults.temperature, step=0.05,
                                    label="Temperature")
            top_k = gr.Slider(0, limits.max_top_k, value=defaults.top_k or 0, step=1, label="Top-k (0 = off)")
            max_tokens = gr.Slider(16, ceiling, step=16, label="Max new tokens", value=min(defaults.max_tokens, ceiling),
                                   elem_id="nc-max-tokens")
            system = gr.Textbox(label="System prompt (optional)", lines=2, max_length=limits.max_message_chars)
        max_tokens.change(clamp_max_tokens, max_tokens, max_tokens, queue=False, preprocess=False,
                          api_visibility="private")

        inputs, outputs = [textbox, entries, system, temperature, top_k, max_tokens], [chatbot, entries, textbox]
        # the ModelPool queues; Gradio's own queue must not serialise on top of it. Raw inputs (preprocess=False):
        # respond clamps the controls itself, where Gradio would fail the turn on an out-of-range typed number
        run = dict(fn=respond, inputs=inputs, outputs=outputs, concurrency_limit=None, api_visibility="private",
                   preprocess=False,
               show_progress="minimal", show_progress_on=[chatbot])
        submitted = textbox.submit(**run)
        picked = chatbot.example_select(pick, None, textbox, queue=False,
                                        api_visibility="private").then(**run)
        for event in (submitted, picked):  # whatever happened, the box ends up ready for the next message
            event.then(idle, None, textbox, queue=False, api_visibility="private")
        textbox.stop(idle, None, textbox, cancels=[submitted, picked], queue=False, api_visibility="private")
    return demo
