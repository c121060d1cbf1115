"""The Gradio chat page served at / beside the API: streaming replies, sampling controls, example prompts.

The one idea: the page is only another client of the same `ModelPool` as the API — same limits, same slots
and queue, same text streaming — so the browser can never do what an API caller could not.
"""
from __future__ import annotations

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402

from nanochat.common import NanochatError  # noqa: E402
from nanochat.serving import (Limits, ModelInfo, ModelPool, SamplingParams, ServerBusy,  # noqa: E402
                              check_conversation, check_sampling, render_prompt)

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
footer { display: none !important; }
"""


def _text_of(content) -> str:
    """Gradio history content (a string, a text part, or a list of them) as plain text."""
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        return content.get("text") or ""
    if isinstance(content, (list, tuple)):
        return "".join(_text_of(c) for c in content)
    return ""


def header_html(info: ModelInfo) -> str:
    return (f"<div id='nc-header'><h1>nanochat</h1><p>A small ChatGPT trained from scratch. It makes things up; "
            f"treat its answers as a curiosity.</p>"
            f"<span class='nc-badge'>{info.id}</span><span class='nc-badge'>stage: {info.stage}</span>"
            f"<span class='nc-badge'>{info.size} parameters</span>"
            f"<span class='nc-badge'>{info.n_layer} layers · context {info.sequence_len}</span></div>")


def build_ui(pool: ModelPool, info: ModelInfo, limits: Limits, defaults: SamplingParams) -> gr.Blocks:
    async def respond(message, history, temperature, top_k, max_tokens):
        messages = [{"role": m["role"], "content": _text_of(m["content"])} for m in history
                    if m.get("role") in ("user", "assistant") and _text_of(m["content"])]
        messages.append({"role": "user", "content": _text_of(message)})
        try:
            conv = check_conversation(messages, limits)
            p = check_sampling(SamplingParams(temperature=float(temperature), top_k=int(top_k),
                                              max_tokens=int(max_tokens)), limits)
            prompt, p.max_tokens = render_prompt(pool.tokenizer, conv, info.sequence_len, p.max_tokens)
            text = ""
            async for delta in pool.generate(prompt, p):
                text += delta.text
                yield text
        except ServerBusy:
            raise gr.Error("The server is busy; try again in a moment.") from None
        except NanochatError as e:
            raise gr.Error(str(e)) from None

    with gr.Blocks(title=f"nanochat · {info.id}", fill_height=True) as demo:
        gr.HTML(header_html(info))
        controls = [
            gr.Slider(0.0, limits.max_temperature, value=defaults.temperature, step=0.05, label="Temperature",
                      render=False),
            gr.Slider(0, limits.max_top_k, value=defaults.top_k or 0, step=1, label="Top-k (0 = off)",
                      render=False),
            gr.Slider(16, min(limits.max_tokens, info.sequence_len), step=16, label="Max new tokens",
                      value=min(defaults.max_tokens, info.sequence_len), render=False),
        ]
        gr.ChatInterface(
            respond,
            chatbot=gr.Chatbot(height=480, placeholder="Ask me anything — replies stream as they are sampled.",
                               buttons=["copy"], feedback_options=None, elem_id="nc-chat", show_label=False),
            textbox=gr.Textbox(placeholder="Message nanochat…", max_length=limits.max_message_chars,
                               submit_btn=True, stop_btn=True, elem_id="nc-input", show_label=False),
            additional_inputs=controls,
            additional_inputs_accordion=gr.Accordion("Sampling: temperature, top-k, length", open=False,
                                                     render=False),
            # prompt-only examples: shown as buttons in the empty chat, sampled with the current slider values
            examples=[[e] for e in EXAMPLES],
            run_examples_on_click=True,
            cache_examples=False,
            concurrency_limit=None,  # the ModelPool queues; Gradio's own queue must not serialise on top of it
            api_visibility="private",
            fill_height=True,
        )
    return demo
