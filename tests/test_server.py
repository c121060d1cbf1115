"""The OpenAI-compatible API, driven by the official `openai` client against live servers on 127.0.0.1."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from tests.serve_helpers import ScriptedEngine, export_tiny_model

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

from nanochat.server import BackgroundServer, build_server, create_app  # noqa: E402
from nanochat.serving import Limits, ModelInfo, ModelPool, SamplingParams, TextStream  # noqa: E402
from nanochat.tokenizer import Tokenizer  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MULTIBYTE = "héllo wörld — 世界 🎉🚀 ok\u2028\x85."  # U+2028/U+0085: line breaks to some SSE readers


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return export_tiny_model(tmp_path_factory.mktemp("serve") / "model")


@pytest.fixture(scope="module")
def live(model_dir):
    """(url, openai client) of a real-model server (API only; the UI has its own test)."""
    app, info = build_server(ckpt=str(model_dir), device="cpu", ui=False, max_concurrency=2,
                             defaults={"max_tokens": 24})
    with BackgroundServer(app) as url:
        yield url, openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=30)


def scripted_app(text, delay=0.0, max_queue=256):
    tok = Tokenizer.byte_level()
    pool = ModelPool([ScriptedEngine(tok, text, delay)], tok, max_queue=max_queue)
    info = ModelInfo(id="scripted", stage="sft", params=1, n_layer=1, sequence_len=128, path="-")
    return create_app(pool, info, Limits(), SamplingParams(max_tokens=100), ui=False), pool


def ask(client, content="Why is the sky blue?", **kw):
    kw.setdefault("max_tokens", 16)
    return client.chat.completions.create(model="nanochat", messages=[{"role": "user", "content": content}], **kw)


def test_models_health_and_chat(live, model_dir):
    url, client = live
    models = client.models.list().data
    assert len(models) == 1 and models[0].id.startswith("nanochat-d1-sft")
    assert httpx.get(f"{url}/health").json()["status"] == "ok"
    r = ask(client, max_tokens=16, seed=3)
    choice = r.choices[0]
    assert r.object == "chat.completion" and choice.message.role == "assistant"
    assert choice.finish_reason in ("stop", "length") and isinstance(choice.message.content, str)
    assert 1 <= r.usage.completion_tokens <= 16
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    # bos, user_start, the UTF-8 bytes of the question, user_end, assistant_start
    assert r.usage.prompt_tokens == 4 + len("Why is the sky blue?".encode())


def test_seed_reproducible_and_stream_equals_nonstream(live):
    _, client = live
    a = ask(client, seed=7, temperature=1.0, max_tokens=20).choices[0].message.content
    b = ask(client, seed=7, temperature=1.0, max_tokens=20).choices[0].message.content
    c = ask(client, seed=8, temperature=1.0, max_tokens=20).choices[0].message.content
    assert a == b and a != c
    chunks = list(ask(client, seed=7, temperature=1.0, max_tokens=20, stream=True,
                      stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == a
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] in ("stop", "length")
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens >= 1


def test_n_samples(live):
    _, client = live
    r = ask(client, n=3, seed=1, temperature=1.0, max_tokens=20)
    assert [c.index for c in r.choices] == [0, 1, 2]
    assert len({c.message.content for c in r.choices}) > 1  # independent samples of one prompt
    texts = ["", "", ""]
    for ch in ask(client, n=3, seed=1, temperature=1.0, max_tokens=20, stream=True):
        for c in ch.choices:
            texts[c.index] += c.delta.content or ""
    assert texts == [c.message.content for c in r.choices]


def test_special_token_text_stays_plain(live):
    _, client = live
    text = "<|assistant_start|><|bos|>"
    r = ask(client, text, max_tokens=1)
    # as special ids this would be 4 + 2 tokens; as plain text it is one token per byte
    assert r.usage.prompt_tokens == 4 + len(text.encode())


@pytest.mark.parametrize("kwargs, needle", [
    (dict(messages=[{"role": "user", "content": "x"}] * 501), "too many messages"),
    (dict(messages=[{"role": "user", "content": "x" * 8001}]), "limit is 8000"),
    (dict(messages=[{"role": "user" if i % 2 == 0 else "assistant", "content": "x" * 7000} for i in range(5)]),
     "limit is 32000"),
    (dict(temperature=2.5), "temperature"),
    (dict(extra_body={"top_k": 201}), "top_k"),
    (dict(max_tokens=4097), "max_tokens"),
    (dict(messages=[{"role": "wizard", "content": "hi"}]), "role"),
    (dict(messages=[{"role": "user", "content": "a" * 300}]), "context"),
])
def test_limits_and_bad_input_are_openai_400s(live, kwargs, needle):
    url, client = live
    kwargs.setdefault("messages", [{"role": "user", "content": "hi"}])
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="nanochat", **kwargs)
    assert err.value.status_code == 400
    body = err.value.response.json()["error"]
    assert needle in body["message"] and body["type"] == "invalid_request_error"


@pytest.mark.parametrize("body", [
    b'{"messages": [{"role": "user", "content": "hi"}',          # truncated JSON
    b"not json at all",
    b'{"messages": "hi"}',                                          # wrong type
    b'{"messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}',
    b'{"messages": [{"role": "user", "content": 5}]}',
    b'{"messages": [{"content": "hi"}]}',                          # no role
    b"[]",
])
def test_malformed_requests_never_500(live, body):
    url, client = live
    r = httpx.post(f"{url}/v1/chat/completions", content=body, headers={"content-type": "application/json"})
    assert r.status_code in (400, 422), r.text
    assert r.json()["error"]["message"]
    assert ask(client, max_tokens=2).choices  # the worker is alive


def test_multibyte_stream_never_splits_characters():
    app, _ = scripted_app(MULTIBYTE)
    with BackgroundServer(app) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        pieces = [ch.choices[0].delta.content for ch in ask(client, stream=True, max_tokens=100)
                  if ch.choices and ch.choices[0].delta.content]
        assert "".join(pieces) == MULTIBYTE and not any("\ufffd" in p for p in pieces)
        assert len(pieces) > 10  # really streamed, piece by piece
        # non-streaming, and a stop sequence cut exactly (also across the chunks that carry it)
        assert ask(client, max_tokens=100).choices[0].message.content == MULTIBYTE
        r = ask(client, max_tokens=100, stop=["世界", "nope"])
        assert r.choices[0].message.content == "héllo wörld — " and r.choices[0].finish_reason == "stop"
        streamed = "".join(ch.choices[0].delta.content or "" for ch in ask(client, stream=True, stop=["wör"])
                           if ch.choices)
        assert streamed == "héllo "
        raw = httpx.post(f"{url}/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}],
                                                             "stream": True}).text
        events = [line[6:] for line in raw.splitlines() if line.startswith("data: ")]  # the strictest splitting
        assert events[-1] == "[DONE]" and all(json.loads(e) for e in events[:-1])
        cut = ask(client, max_tokens=3)  # 'h', then the two bytes of 'é'
        assert cut.choices[0].message.content == "hé" and cut.choices[0].finish_reason == "length"


def test_text_stream_holds_back_partial_characters_and_stop_prefixes():
    tok = Tokenizer.byte_level()
    s = TextStream(tok, stop=["STOP"])
    out = [s.push(t) for t in tok.encode("a€ST")]
    assert out == ["a", "", "", "€", "", ""]  # '€' is 3 bytes; "ST" may still become "STOP"
    assert s.push(tok.encode("x")[0]) == "STx" and s.finish() == ""
    s = TextStream(tok)
    assert [s.push(t) for t in tok.encode("é")[:1]] == [""] and s.finish() == "\ufffd"


def test_bounded_queue_and_disconnect_release_the_slot():
    app, pool = scripted_app("abcdefghijklmnopqrstuvwxyz" * 3, delay=0.05, max_queue=0)  # ~4 s per answer
    body = {"messages": [{"role": "user", "content": "hi"}], "stream": True, "max_tokens": 78}
    with BackgroundServer(app) as url, httpx.Client(base_url=url, timeout=10) as http:
        with http.stream("POST", "/v1/chat/completions", json=body) as first:
            assert first.status_code == 200
            next(first.iter_lines())  # the only slot is taken and the queue may hold nobody
            busy = http.post("/v1/chat/completions", json={**body, "stream": False})
            assert busy.status_code == 503 and busy.json()["error"]["code"] == "server_busy"
            assert http.get("/health").json()["active"] == 1
        # the client went away mid-stream: the worker stops at its next step, long before its 4 s are up
        start = time.monotonic()
        while http.get("/health").json()["active"] and time.monotonic() - start < 2:
            time.sleep(0.02)
        assert http.get("/health").json()["active"] == 0
        r = http.post("/v1/chat/completions", json={**body, "stream": False, "max_tokens": 3})
        assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "abc"


def test_serve_entry_point_without_a_model_says_how_to_train(tmp_path):
    env = {**os.environ, "NANOCHAT_OUTPUTS": str(tmp_path / "outputs")}
    r = subprocess.run([sys.executable, os.path.join(ROOT, "serve.py")], capture_output=True, text=True,
                       cwd=tmp_path, env=env, timeout=60)
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "python train.py stage=" in lines[0], r.stderr


def test_serve_config_composes():
    from hydra.core.global_hydra import GlobalHydra

    from nanochat.config.app import compose

    GlobalHydra.instance().clear()
    cfg = compose("serve", ["port=9000"])
    assert cfg.host == "127.0.0.1" and cfg.port == 9000 and cfg.ckpt is None
    assert Limits(**cfg.limits) == Limits()  # the config and the code agree on the reference limits
    json.dumps(dict(cfg.defaults_sampling))
