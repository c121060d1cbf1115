"""The API's edges: OpenAI-shaped errors for every refusal (404, 405, 413, 400), the body-size cap, seed and stop
limits, model names, refused options, log-probabilities and calculator use that round-trips exactly."""
from __future__ import annotations

import json
import socket

import pytest

from tests.serve_helpers import ScriptedEngine, export_tiny_model

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

from nanochat.chat import render_conversation, render_for_completion  # noqa: E402
from nanochat.server import BackgroundServer, build_server, create_app  # noqa: E402
from nanochat.serving import Limits, ModelInfo, ModelPool, SamplingParams  # noqa: E402
from nanochat.tokenizer import Tokenizer  # noqa: E402

USER = [{"role": "user", "content": "What is 12*12?"}]


def _tool_script(tok):
    """A calculator answer as the engine produces it: text, python call, forced output, text."""
    sp = tok.encode_special
    return (tok.encode("Sure: ") + [sp("<|python_start|>")] + tok.encode("12*12") + [sp("<|python_end|>"),
            sp("<|output_start|>")] + tok.encode("144") + [sp("<|output_end|>")] + tok.encode(" so 144."))


@pytest.fixture(scope="module")
def scripted():
    """(url, client, tokenizer) of a server whose engine answers with a calculator call; small body cap."""
    tok = Tokenizer.byte_level()
    engine = ScriptedEngine(tok, "")
    engine.ids = _tool_script(tok)
    pool = ModelPool([engine], tok)
    info = ModelInfo(id="nanochat-d1-sft", stage="sft", params=1, n_layer=1, sequence_len=128, path="-")
    app = create_app(pool, info, Limits(max_body_bytes=4000), SamplingParams(max_tokens=100), ui=False)
    with BackgroundServer(app) as url:
        yield url, openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=10), tok


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    app, _ = build_server(ckpt=str(export_tiny_model(tmp_path_factory.mktemp("api") / "model")), device="cpu",
                          ui=False, max_concurrency=1, defaults={"max_tokens": 12})
    with BackgroundServer(app) as url:
        yield url, openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=30)


def openai_error(r, status, code=None):
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    if code is not None:
        assert err["code"] == code, err
    return err


def test_unknown_routes_and_methods_are_openai_errors(scripted):
    url, _, _ = scripted
    openai_error(httpx.get(f"{url}/v1/nope"), 404, "not_found")
    openai_error(httpx.post(f"{url}/v1/completions", json={}), 404, "not_found")
    openai_error(httpx.get(f"{url}/elsewhere"), 404, "not_found")
    r = httpx.get(f"{url}/v1/chat/completions")
    openai_error(r, 405, "method_not_allowed")
    assert r.headers["allow"] == "POST"
    openai_error(httpx.delete(f"{url}/v1/models"), 405)


def test_body_cap_by_length_and_by_stream(scripted):
    url, _, _ = scripted
    big = json.dumps({"messages": USER, "user": "x" * 5000}).encode()
    openai_error(httpx.post(f"{url}/v1/chat/completions", content=big,
                            headers={"content-type": "application/json"}), 413, "request_too_large")
    # chunked upload (no Content-Length): cut off once the bytes pass the cap
    chunks = (big[i:i + 1000] for i in range(0, len(big), 1000))
    openai_error(httpx.post(f"{url}/v1/chat/completions", content=chunks,
                            headers={"content-type": "application/json"}), 413, "request_too_large")
    # a 300 MB promise is refused at once, from the header, without waiting for the body
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 300000000\r\n\r\n{")
        head = b""
        while b"request_too_large" not in head and (more := s.recv(4096)):
            head += more
        head = head.decode()
    assert head.startswith("HTTP/1.1 413") and "request_too_large" in head
    assert httpx.post(f"{url}/v1/chat/completions", json={"messages": USER}).status_code == 200


@pytest.mark.parametrize("extra, param", [
    ({"seed": 2**64}, "seed"),
    ({"seed": -(2**63) - 1}, "seed"),
    ({"stop": ["x" * 65]}, "stop"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]}, "tools"),
    ({"tool_choice": "auto"}, "tool_choice"),
    ({"functions": [{"name": "f"}]}, "functions"),
    ({"response_format": {"type": "json_object"}}, "response_format"),
    ({"top_logprobs": 2}, "top_logprobs"),
    ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
])
def test_out_of_range_and_unsupported_options_are_400(scripted, extra, param):
    url, _, _ = scripted
    r = httpx.post(f"{url}/v1/chat/completions", json={"messages": USER, **extra})
    assert openai_error(r, 400)["param"] == param


def test_accepted_edges(scripted):
    url, _, _ = scripted
    for extra in ({"seed": 2**64 - 1}, {"seed": -5}, {"stop": ["x" * 64]}, {"response_format": {"type": "text"}},
                  {"tool_choice": "none"}, {"model": "nanochat"}, {"model": "nanochat-d1-sft"}):
        assert httpx.post(f"{url}/v1/chat/completions", json={"messages": USER, **extra}).status_code == 200, extra


def test_models_retrieve_and_unknown_model(scripted):
    _, client, _ = scripted
    assert client.models.retrieve("nanochat-d1-sft").id == "nanochat-d1-sft"
    assert client.models.retrieve("nanochat").id == "nanochat-d1-sft"  # the documented alias
    with pytest.raises(openai.NotFoundError) as err:
        client.models.retrieve("gpt-4o")
    assert err.value.body["code"] == "model_not_found"
    with pytest.raises(openai.NotFoundError) as err:
        client.chat.completions.create(model="gpt-4o", messages=USER)
    assert err.value.body["code"] == "model_not_found" and err.value.body["param"] == "model"


def test_tool_use_is_readable_and_round_trips(scripted):
    url, client, tok = scripted
    r = client.chat.completions.create(model="nanochat", messages=USER)
    message = r.choices[0].message
    assert message.content == "Sure: [calculator: 12*12 = 144] so 144."
    parts = message.model_extra["parts"]
    assert parts == [{"type": "text", "text": "Sure: "}, {"type": "python", "text": "12*12"},
                     {"type": "python_output", "text": "144"}, {"type": "text", "text": " so 144."}]
    # sent back as history, the parts render to exactly the tokens the engine produced
    conv = {"messages": [*USER, {"role": "assistant", "content": parts}, {"role": "user", "content": "thanks"}]}
    ids, _ = render_conversation(tok, conv)
    prefix = render_for_completion(tok, {"messages": USER})
    assert ids[len(prefix):len(prefix) + len(_tool_script(tok)) + 1] == \
        _tool_script(tok) + [tok.encode_special("<|assistant_end|>")]
    again = client.chat.completions.create(model="nanochat", messages=conv["messages"])
    assert again.usage.prompt_tokens == len(render_for_completion(tok, conv))
    # streamed: the same readable text, and the parts rebuilt from the chunks' `part` fields
    content, rebuilt = "", []
    for ch in client.chat.completions.create(model="nanochat", messages=USER, stream=True):
        for c in ch.choices:
            content += c.delta.content or ""
            part = (c.delta.model_extra or {}).get("part") or ({"type": "text", "text": c.delta.content}
                                                              if c.delta.content else None)
            if part and rebuilt and rebuilt[-1]["type"] == part["type"]:
                rebuilt[-1]["text"] += part["text"]
            elif part:
                rebuilt.append(dict(part))
    assert content == message.content
    assert [p for p in rebuilt if p["type"] != "text"] == parts[1:3]


def test_logprobs_nonstream_and_stream(live):
    _, client = live
    kw = dict(model="nanochat", messages=[{"role": "user", "content": "hello"}], max_tokens=8, temperature=0,
              logprobs=True, top_logprobs=3)
    r = client.chat.completions.create(**kw)
    entries = r.choices[0].logprobs.content
    assert len(entries) == r.usage.completion_tokens
    for e in entries:
        assert len(e.top_logprobs) == 3 and e.logprob <= 0
        assert e.logprob == pytest.approx(e.top_logprobs[0].logprob)  # greedy picks the likeliest
        assert e.top_logprobs[0].logprob >= e.top_logprobs[1].logprob >= e.top_logprobs[2].logprob
    if r.choices[0].finish_reason == "length":  # no end token cut off: the bytes are the text
        assert bytes(b for e in entries for b in e.bytes).decode("utf-8", "replace") == r.choices[0].message.content
    streamed = [e for ch in client.chat.completions.create(**kw, stream=True) for c in ch.choices
                if c.logprobs for e in c.logprobs.content]
    assert [(e.token, e.logprob) for e in streamed] == [(e.token, e.logprob) for e in entries]
    plain = client.chat.completions.create(**{**kw, "logprobs": None, "top_logprobs": None})
    assert plain.choices[0].logprobs is None and plain.choices[0].message.content == r.choices[0].message.content


def test_engine_logprobs_hook_matches_the_model():
    import torch

    from nanochat.engine import Engine
    from nanochat.gpt import GPT, GPTConfig

    torch.manual_seed(0)
    model = GPT(GPTConfig(sequence_len=64, vocab_size=265, n_layer=1, n_head=2, n_kv_head=2, n_embd=32))
    model.init_weights()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    tok = Tokenizer.byte_level()
    engine, prompt = Engine(model, tok), [tok.bos_token_id, *tok.encode("abc")]
    steps = list(engine.generate(prompt, max_tokens=3, temperature=1.0, seed=5, logprobs=2))
    plain = list(engine.generate(prompt, max_tokens=3, temperature=1.0, seed=5))
    assert [s[0] for s in steps] == [s[0] for s in plain] and all(len(s) == 3 for s in steps)
    seq = list(prompt)
    for tokens, _, rows in steps:
        with torch.no_grad():
            logits = model(torch.tensor([seq]))[0, -1].float()
        logits[tok.bos_token_id] = float("-inf")  # never sampled, as in the engine
        ref = torch.log_softmax(logits, -1)
        lp, top = rows[0]
        assert lp == pytest.approx(ref[tokens[0]].item(), abs=1e-4)
        assert [t for t, _ in top] == ref.topk(2).indices.tolist()
        seq.append(tokens[0])


def test_body_cap_is_a_serve_config_key():
    from hydra.core.global_hydra import GlobalHydra

    from nanochat.config.app import compose

    GlobalHydra.instance().clear()
    cfg = compose("serve", ["limits.max_body_bytes=5000", "limits.max_stop_chars=8"])
    limits = Limits(**cfg.limits)
    assert limits.max_body_bytes == 5000 and limits.max_stop_chars == 8
    assert Limits(**compose("serve", []).limits) == Limits()  # the config and the code agree on the defaults


def test_seed_range_on_the_real_engine(live):
    url, _ = live
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    for seed in (2**64 - 1, -(2**63)):  # torch.Generator's whole range works
        assert httpx.post(f"{url}/v1/chat/completions", json={**body, "seed": seed}).status_code == 200
    r = httpx.post(f"{url}/v1/chat/completions", json={**body, "seed": 2**64})  # was a 500 and a dropped connection
    assert openai_error(r, 400)["param"] == "seed"
    assert httpx.post(f"{url}/v1/chat/completions", json={**body, "seed": 1}).status_code == 200
