"""The web UI's chat logic without a browser: replies kept as tool-use parts, fitting a chat into the context,
and a chat turn that turns every refusal or failure into a notice instead of raising."""
from __future__ import annotations

import asyncio
import logging
from types import SimpleNamespace

import pytest

from nanochat.chat import render_conversation, render_for_completion
from nanochat.chat_render import DoesNotFit, extend_reply, fence, fit_conversation, sendable, tool_title
from nanochat.tokenizer import Tokenizer

TOK = Tokenizer.byte_level()
SP = TOK.encode_special


def _tool_ids():
    return (TOK.encode("Let me check.") + [SP("<|python_start|>")] + TOK.encode("12*12") + [SP("<|python_end|>"),
            SP("<|output_start|>")] + TOK.encode("144") + [SP("<|output_end|>")] + TOK.encode(" It is 144."))


class TokenEngine:
    def __init__(self, ids, fail: Exception | None = None):
        self.ids, self.fail, self.prompts = list(ids), fail, []

    def generate(self, prompts, num_samples=1, max_tokens=256, **kw):
        self.prompts.append(list(prompts[0]))
        if self.fail:
            raise self.fail
        for tok in self.ids[:max_tokens] + [SP("<|assistant_end|>")]:
            yield [tok] * num_samples, [1] * num_samples


def test_streamed_tool_call_sent_back_renders_the_same_tokens():
    from nanochat.serving import SamplingParams, stream_rows

    parts: list[dict] = []
    for delta in stream_rows(TokenEngine(_tool_ids()), TOK, [TOK.bos_token_id], SamplingParams(max_tokens=100)):
        extend_reply(parts, getattr(delta, "kind", "text"), delta.text)
    assert [p["type"] for p in parts] == ["text", "python", "python_output", "text"]
    ids, _ = render_conversation(TOK, {"messages": [{"role": "user", "content": "hi"},
                                                    {"role": "assistant", "content": sendable(parts)}]})
    start = ids.index(SP("<|assistant_start|>"))
    assert ids[start + 1:] == _tool_ids() + [SP("<|assistant_end|>")]
    # a reply cut inside a call still goes back as a valid conversation
    assert sendable([{"type": "text", "text": "a"}, {"type": "python", "text": " "},
                     {"type": "python_output", "text": "1"}]) == [{"type": "text", "text": "a"}]


def test_tool_title_and_fence_are_readable_and_exact():
    assert tool_title("12*12", "144") == "calculator: 12*12 = 144"
    assert tool_title("1 +\n 2", None) == "calculator: 1 + 2"
    assert tool_title("9" * 100, "1").startswith("calculator: 999") and len(tool_title("9" * 100, "1")) < 90
    block = fence("a ``` b")
    assert block.startswith("````\n") and block.endswith("\n````") and "a ``` b" in block


def _chat(turns: int, system: bool = False):
    msgs = [{"role": "system", "content": "Be brief."}] if system else []
    for i in range(turns):
        msgs += [{"role": "user", "content": f"question {i}"}, {"role": "assistant", "content": "x" * 30}]
    return msgs + [{"role": "user", "content": "last one"}]


def test_fit_drops_oldest_exchanges_and_keeps_the_system_prompt():
    ids, kept, dropped = fit_conversation(TOK, _chat(1), 128, 32)
    assert dropped == 0 and len(kept) == 3
    ids, kept, dropped = fit_conversation(TOK, _chat(6, system=True), 128, 32)
    assert 0 < dropped < 6 and kept[0]["role"] == "system" and kept[-1]["content"] == "last one"
    assert kept[1]["content"] == f"question {dropped}" and len(ids) + 32 <= 128
    assert ids == render_for_completion(TOK, {"messages": kept})
    _, kept, dropped = fit_conversation(TOK, _chat(3), 10_000, 32, max_messages=3)
    assert dropped == 2 and len(kept) == 3
    with pytest.raises(DoesNotFit, match="context is only 128 tokens"):
        fit_conversation(TOK, _chat(2)[:-1] + [{"role": "user", "content": "y" * 200}], 128, 32)


# -- the chat turn -------------------------------------------------------------------------------------------
webui = pytest.importorskip("nanochat.webui", reason="gradio not installed")


def _turn(engine, message, entries=(), max_tokens=128, limits=None):
    """Run one chat turn to the end: (its last output, every output)."""
    from nanochat.serving import Limits, ModelPool, SamplingParams

    respond = webui.make_respond(ModelPool([engine], TOK), SimpleNamespace(sequence_len=128), limits or Limits(),
                                 SamplingParams(max_tokens=128), 128)

    async def run():
        return [out async for out in respond(message, list(entries), "", 0.8, 50, max_tokens)]

    outs = asyncio.run(run())
    return outs[-1], outs


def _notices(entries):
    return [e["content"] for e in entries if e["role"] == "notice"]


def test_refusals_and_failures_are_notices_and_the_box_comes_back(caplog):
    caplog.set_level(logging.INFO)
    for engine, message, said in [
        (TokenEngine(_tool_ids()), "y" * 300, "cannot be answered"),
        (TokenEngine([], fail=RuntimeError("CUDA out of memory")), "hello", "failed while answering"),
    ]:
        (view, entries, box), outs = _turn(engine, message)
        assert said in _notices(entries)[-1] and said in view[-1]["content"]
        assert box.submit_btn is True and box.stop_btn is False  # ready for the next message
        assert outs[0][2].stop_btn is True  # while it ran, the stop button was live
    assert not [r for r in caplog.records if r.exc_info]  # one line each, no traceback


def test_outgrown_chat_drops_old_turns_once_and_tool_use_goes_back():
    engine = TokenEngine(_tool_ids())
    entries = []
    for i in range(5):
        (view, entries, _), _ = _turn(engine, f"Tell me more, part {i}.", entries, max_tokens=10**9)  # clamped
    notes = _notices(entries)
    assert notes and all("Older turns were dropped" in n for n in notes) and len(notes) <= 3
    assert all(len(p) < 128 for p in engine.prompts)
    assert engine.prompts[1].count(SP("<|python_start|>")) == 1 and engine.prompts[1].count(SP("<|output_end|>")) == 1
    shown = " ".join(str(m["content"]) for m in view)
    assert "<|" not in shown
    assert any(m.get("metadata", {}).get("title") == "calculator: 12*12 = 144" for m in view)


def test_user_text_is_shown_as_typed_and_sampling_is_clamped():
    html = webui.user_html("**b** <i>x</i> & $y$\n\nz")
    assert "<i>" not in html and "&lt;i&gt;" in html and "\n" not in html and "&#10;&#10;z" in html
    from nanochat.serving import Limits, SamplingParams

    p = webui.ui_sampling(99, -5, 10**9, Limits(), SamplingParams(), 128)
    assert (p.temperature, p.top_k, p.max_tokens) == (Limits().max_temperature, None, 128)
    p = webui.ui_sampling(None, "x", float("nan"), Limits(), SamplingParams(max_tokens=64), 128)
    assert p.max_tokens == 64
