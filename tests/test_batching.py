"""Continuous batching: batched rows give the engine's own tokens, capacity bounds rows, and requests whose
reader leaves (an async iterator closed, an HTTP client that hangs up) stop within a step."""
from __future__ import annotations

import asyncio
import json
import socket
import threading
import time

import pytest
import torch

from nanochat.batcher import Batcher
from nanochat.engine import Engine
from nanochat.gpt import GPT, GPTConfig
from nanochat.serving import ModelInfo, ModelPool, SamplingParams, stream_rows
from nanochat.tokenizer import Tokenizer

TOK = Tokenizer.byte_level()
ENDERS = {TOK.encode_special("<|assistant_end|>"), TOK.bos_token_id}
pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_engine(seq: int = 64, **kw) -> Engine:
    torch.manual_seed(0)
    model = GPT(GPTConfig(sequence_len=seq, vocab_size=265, n_layer=2, n_head=2, n_kv_head=1, n_embd=64, **kw))
    model.init_weights()
    with torch.no_grad():  # away from the zero-initialised head, so that rows differ and rarely stop
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return Engine(model, TOK)


def prompt(length: int, salt: int = 0) -> list[int]:
    return [TOK.bos_token_id] + [(7 * i + salt) % 250 + 3 for i in range(length - 1)]


def run_schedule(batcher: Batcher, plan: list[tuple], timeout: float = 30.0) -> dict:
    """plan: (name, prompt, SamplingParams, join) with join = None (at once) or (other name, its step count):
    the request is submitted from inside the loop, between two steps. Returns each request's rows' tokens."""
    out, done, peak = {}, threading.Event(), [0]
    later = [(name, pr, p, join) for name, pr, p, join in plan if join is not None]

    def submit(name, pr, p):
        out[name] = [[] for _ in range(p.n)]

        def emit(kind, payload):
            if kind == "error":
                out[name] = payload
                done.set()
                return True
            if kind == "tokens":
                peak[0] = max(peak[0], batcher.rows)
                for row, tok in zip(out[name], payload[0]):
                    row.append(tok)
                for other, opr, op, (after, step) in later:
                    if after == name and len(out[name][0]) == step:
                        submit(other, opr, op)
            if kind == "end" and len(out) == len(plan) and not batcher.pending and not batcher.jobs:
                done.set()
            return False

        batcher.submit(pr, p, emit)

    for name, pr, p, join in plan:
        if join is None:
            submit(name, pr, p)
    assert done.wait(timeout), "the batch did not finish"
    for name, rows in out.items():
        if isinstance(rows, BaseException):
            raise rows
        out[name] = [row[: next((i for i, t in enumerate(row) if t in ENDERS), len(row))] for row in rows]
    out["peak_rows"] = peak[0]
    return out


@pytest.mark.parametrize("features", [{}, dict(smear=True, window_pattern="SL", short_window_multiple=8)],
                         ids=["plain", "smear_windows"])
@pytest.mark.parametrize("temperature", [0.0, 0.9])
def test_rows_joining_midway_give_the_engines_tokens(features, temperature):
    """Different prompt lengths, requests joining at different steps (a longer prompt than the batch so far
    moves every row right), n=2 and n=1 requests, capacity 4 rows (the last waits for room), a cache of 64
    slots that fills (rows shift left): each request's tokens equal Engine.generate's for it alone."""
    engine = tiny_engine(**features)
    p = lambda n, seed, mt=20: SamplingParams(temperature=temperature, top_k=20, n=n, seed=seed, max_tokens=mt)  # noqa: E731
    plan = [("a", prompt(4), p(2, 1), None),
            ("b", prompt(11, 1), p(1, 2), ("a", 3)),
            ("c", prompt(30, 2), p(1, 3, 30), ("b", 4)),   # 30 > shared position: the batch moves right
            ("d", prompt(41, 3), p(2, 4), ("a", 6)),       # no room (2 + 1 + 1 rows): joins when a leaves
            ("e", prompt(3, 4), p(1, 5, 40), ("c", 2))]
    batcher = Batcher(engine, max_rows=4)
    try:
        got = run_schedule(batcher, plan)
    finally:
        batcher.close()
    assert got["peak_rows"] <= 4
    for name, pr, sp, _ in plan:
        want, _ = engine.generate_batch([pr], num_samples=sp.n, max_tokens=sp.max_tokens, temperature=temperature,
                                        top_k=sp.top_k, seed=sp.seed)
        assert got[name] == want, name


def test_a_request_bigger_than_the_capacity_runs_alone():
    engine = tiny_engine()
    batcher = Batcher(engine, max_rows=2)
    sp = SamplingParams(temperature=0.0, n=3, max_tokens=8)
    try:
        got = run_schedule(batcher, [("a", prompt(5), SamplingParams(temperature=0.0, n=1, max_tokens=12), None),
                                     ("big", prompt(9), sp, ("a", 2))])
    finally:
        batcher.close()
    assert got["big"] == engine.generate_batch([prompt(9)], num_samples=3, max_tokens=8, temperature=0.0)[0]


def _pool(engine, rows=4):
    return ModelPool([engine], TOK, slots_per_replica=rows)


def test_concurrent_pool_requests_answer_what_the_engine_alone_answers():
    """Through ModelPool (text, stop strings, n=2) with requests started together: the same Deltas' text as
    stream_rows on the unbatched engine."""
    engine = tiny_engine(seq=128)
    pool = _pool(engine, rows=5)
    asks = [(prompt(5 + 9 * i, i), SamplingParams(temperature=0.0, n=1 + i % 2, max_tokens=30, seed=0,
                                              stop=("e",) * (i == 2)))
            for i in range(4)]

    async def one(pr, sp):
        texts = [""] * sp.n
        async for d in pool.generate(pr, sp):
            texts[d.row] += d.text
        return texts

    async def main():
        return await asyncio.gather(*(one(pr, sp) for pr, sp in asks))

    try:
        got = asyncio.run(main())
    finally:
        pool.close()
    for (pr, sp), texts in zip(asks, got):
        want = [""] * sp.n
        for d in stream_rows(engine, TOK, pr, sp):
            want[d.row] += d.text
        assert texts == want


def test_closing_the_stream_frees_the_rows_within_a_step():
    engine = tiny_engine(seq=128)
    steps = []
    engine.model.register_forward_hook(lambda *a: steps.append(time.sleep(0.01)))  # returns None
    pool = _pool(engine)
    assert pool.batchers and pool.stats()["batching"]

    async def main():
        deltas = pool.generate(prompt(6), SamplingParams(temperature=0.0, n=2, max_tokens=120))
        await anext(deltas)
        await deltas.aclose()  # what a streaming response does when its client goes away
        seen = len(steps)
        await asyncio.sleep(0.3)  # ~30 steps' time
        return seen

    try:
        seen = asyncio.run(main())
        assert len(steps) <= seen + 1 and pool.batchers[0].jobs == [] and pool.stats()["active"] == 0
    finally:
        pool.close()


@pytest.mark.parametrize("stream", [False, True])
def test_a_client_that_hangs_up_stops_its_generation(stream):
    """A real HTTP client sends a request (n=4, 120 tokens at ~10 ms a step) and closes its socket: the rows
    are freed within a step or two, streamed or not, and the server keeps answering."""
    from nanochat.server import BackgroundServer, create_app

    engine = tiny_engine(seq=128)
    steps = []
    engine.model.register_forward_hook(lambda *a: steps.append(time.sleep(0.01)))  # returns None
    pool = _pool(engine, rows=8)
    info = ModelInfo(id="tiny", stage="sft", params=1, n_layer=2, sequence_len=128, path="-")
    app = create_app(pool, info, defaults=SamplingParams(max_tokens=120), ui=False)
    body = json.dumps({"messages": [{"role": "user", "content": "hi"}], "n": 4, "max_tokens": 120,
                       "temperature": 0, "stream": stream}).encode()
    try:
        with BackgroundServer(app) as url:
            host, port = url.removeprefix("http://").split(":")
            with socket.create_connection((host, int(port))) as s:
                s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                          b"Content-Length: %d\r\n\r\n" % len(body) + body)
                deadline = time.monotonic() + 10
                while not steps and time.monotonic() < deadline:
                    time.sleep(0.01)
                time.sleep(0.1)
            assert pool.batchers[0].jobs, "the generation ended before the client left"
            deadline = time.monotonic() + 3
            while pool.batchers[0].jobs and time.monotonic() < deadline:
                time.sleep(0.01)
            freed_after = len(steps)
            assert not pool.batchers[0].jobs and freed_after < 60  # 120 steps had it run to the end
            import httpx

            r = httpx.post(f"{url}/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}],
                                                               "max_tokens": 3, "temperature": 0}, timeout=30)
            assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] >= 1
    finally:
        pool.close()
