"""The chat server: an OpenAI-compatible API and the Gradio web UI on one port (FastAPI + uvicorn).

    POST /v1/chat/completions   OpenAI chat completions: n, temperature, top_p, top_k, max_tokens, seed, stop,
                                stream (SSE chunks, `stream_options.include_usage`)
    GET  /v1/models             the one served model
    GET  /health                liveness + slot/queue counters
    /                           the web UI (nanochat/webui.py)

The one idea: every request goes through the same `ModelPool` (bounded slots + bounded waiting queue), and
every refusal is an OpenAI-style JSON error (`{"error": {"message", "type", "param", "code"}}`) with status 400
(bad input), 503 (queue full) or 500 (a bug) — bad input never reaches a worker. A streamed request only
commits to a 200 once its first text (or its end) is ready, so an engine refusal is still a clean 400.
"""
from __future__ import annotations

import json
import os
import time
import uuid
from typing import Annotated, Any

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from fastapi import FastAPI, Request  # noqa: E402
from fastapi.exceptions import RequestValidationError  # noqa: E402
from fastapi.responses import JSONResponse, StreamingResponse  # noqa: E402
from pydantic import BaseModel, ConfigDict, Field  # noqa: E402

from nanochat.common import NanochatError  # noqa: E402
from nanochat.serving import (Limits, ModelInfo, ModelPool, RequestError, SamplingParams, ServerBusy,  # noqa: E402
                              check_conversation, check_sampling, load_replicas, pick_devices, render_prompt)

Int = Annotated[int, Field(strict=True)]
Num = Annotated[float, Field(strict=True)]  # strict float still accepts JSON integers


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: str  # checked by check_conversation so that the error names the allowed roles
    content: str | list[dict[str, Any]] | None = None


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")  # OpenAI options we do not implement (user, logit_bias...) pass
    model: str | None = None
    messages: list[ChatMessage]
    temperature: Num | None = None
    top_p: Num | None = None
    top_k: Int | None = None
    max_tokens: Int | None = None
    max_completion_tokens: Int | None = None
    n: Int = 1
    seed: Int | None = None
    stop: str | list[str] | None = None
    stream: Annotated[bool, Field(strict=True)] = False
    stream_options: dict[str, Any] | None = None


def error_response(status: int, message: str, kind: str = "invalid_request_error", param: str | None = None,
                   code: str | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": code}}, status)


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    errors = exc.errors()
    if not errors:
        return "invalid request", None
    e = errors[0]
    if e.get("type") == "json_invalid":
        return "the request body is not valid JSON", None
    loc = [str(x) for x in e.get("loc", ()) if x != "body"]
    param = ".".join(loc) or None
    return (f"{param}: {e.get('msg', 'invalid value')}" if param else e.get("msg", "invalid request")), param


def _sse(obj) -> str:
    # ASCII-escaped JSON: a raw U+2028 or U+0085 in model text would split the event for line-based clients
    return f"data: {json.dumps(obj)}\n\n"


def create_app(pool: ModelPool, info: ModelInfo, limits: Limits | None = None,
               defaults: SamplingParams | None = None, ui: bool = True) -> FastAPI:
    """The FastAPI app: API routes first, then (ui=True) the Gradio page mounted at /."""
    limits = limits or Limits()
    defaults = defaults or SamplingParams()
    context = info.sequence_len
    app = FastAPI(title="nanochat", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.pool, app.state.info = pool, info

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        message, param = _validation_message(exc)
        return error_response(400, message, param=param)

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception):  # a bug: still an OpenAI-shaped answer, worker lives on
        return error_response(500, f"internal error ({type(exc).__name__})", "server_error")

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": info.id, **pool.stats()}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": info.id, "object": "model", "created": 0, "owned_by": "nanochat",
                                            "stage": info.stage, "params": info.params}]}

    @app.post("/v1/chat/completions")
    async def chat_completions(req: ChatRequest):
        try:
            conv = check_conversation([m.model_dump() for m in req.messages], limits)
            stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
            max_tokens = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
            p = check_sampling(SamplingParams(
                temperature=defaults.temperature if req.temperature is None else float(req.temperature),
                top_k=defaults.top_k if req.top_k is None else req.top_k,
                top_p=req.top_p, max_tokens=defaults.max_tokens if max_tokens is None else max_tokens,
                n=req.n, seed=req.seed, stop=tuple(stop)), limits)
            prompt, p.max_tokens = render_prompt(pool.tokenizer, conv, context, p.max_tokens)
            deltas = pool.generate(prompt, p)
            first = await anext(deltas, None)  # waits for a slot and the first text: errors are still a 400
        except RequestError as e:
            return error_response(400, str(e), param=e.param, code=e.code)
        except ServerBusy as e:
            return error_response(503, str(e), "server_error", code="server_busy")
        except NanochatError as e:  # the engine refused the prompt
            return error_response(400, str(e))
        rid, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        usage = {"prompt_tokens": len(prompt)}
        if req.stream:
            include_usage = bool((req.stream_options or {}).get("include_usage"))
            return StreamingResponse(_stream(deltas, first, p.n, rid, created, info.id, usage, include_usage),
                                     media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        texts, finish, tokens = [""] * p.n, [None] * p.n, [0] * p.n
        try:
            d = first
            while d is not None:
                texts[d.row] += d.text
                tokens[d.row] = d.tokens
                finish[d.row] = d.finish or finish[d.row]
                d = await anext(deltas, None)
        except NanochatError as e:
            return error_response(400, str(e))
        finally:
            await deltas.aclose()
        usage["completion_tokens"] = sum(tokens)
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        choices = [{"index": i, "message": {"role": "assistant", "content": texts[i]}, "logprobs": None,
                    "finish_reason": finish[i] or "length"} for i in range(p.n)]
        return {"id": rid, "object": "chat.completion", "created": created, "model": info.id,
                "choices": choices, "usage": usage}

    if ui:
        import gradio as gr

        from nanochat.webui import CSS, THEME, build_ui

        app = gr.mount_gradio_app(app, build_ui(pool, info, limits, defaults), path="/", theme=THEME, css=CSS,
                                  footer_links=[], show_error=True)
    return app


async def _stream(deltas, first, n, rid, created, model, usage, include_usage):
    """OpenAI chat.completion.chunk events; an error after the 200 is sent as an `error` event."""
    def chunk(row, delta, finish=None):
        return _sse({"id": rid, "object": "chat.completion.chunk", "created": created, "model": model,
                     "choices": [{"index": row, "delta": delta, "logprobs": None, "finish_reason": finish}]})

    tokens = [0] * n
    try:
        for i in range(n):
            yield chunk(i, {"role": "assistant", "content": ""})
        d = first
        while d is not None:
            tokens[d.row] = d.tokens
            if d.text:
                yield chunk(d.row, {"content": d.text})
            if d.finish:
                yield chunk(d.row, {}, d.finish)
            d = await anext(deltas, None)
        if include_usage:
            done = {**usage, "completion_tokens": sum(tokens), "total_tokens": usage["prompt_tokens"] + sum(tokens)}
            yield _sse({"id": rid, "object": "chat.completion.chunk", "created": created, "model": model,
                        "choices": [], "usage": done})
        yield "data: [DONE]\n\n"
    except NanochatError as e:
        yield _sse({"error": {"message": str(e), "type": "invalid_request_error", "param": None, "code": None}})
    finally:
        await deltas.aclose()


def build_server(ckpt=None, device="auto", replicas="auto", max_concurrency=None, max_queue=256,
                 limits: dict | None = None, defaults: dict | None = None, ui: bool = True, model_name=None):
    """(app, info): load the model replicas and build the app (no socket yet)."""
    engines, tokenizer, info = load_replicas(ckpt, pick_devices(device, replicas))
    if model_name:
        info.id = str(model_name)
    # default 4 generations per replica: interleaved decoding keeps waits short (measured in bench/serve.py)
    slots = max(1, -(-int(max_concurrency) // len(engines))) if max_concurrency else 4
    pool = ModelPool(engines, tokenizer, slots_per_replica=slots, max_queue=int(max_queue))
    app = create_app(pool, info, Limits(**(limits or {})), SamplingParams(**(defaults or {})), ui=ui)
    return app, info


def serve(host: str = "127.0.0.1", port: int = 8000, log_level: str = "info", **kwargs) -> None:
    """Load the model and serve until interrupted (blocking)."""
    import uvicorn

    app, info = build_server(**kwargs)
    print(f"serving {info.id} ({info.size} parameters, stage {info.stage}, from {info.path}) "
          f"on http://{host}:{port}/  (web UI at /, OpenAI API at /v1)", flush=True)
    uvicorn.run(app, host=host, port=int(port), log_level=log_level)


class BackgroundServer:
    """Run an app with uvicorn in a daemon thread on 127.0.0.1 and a free port (tests, benchmarks, screenshots).

        with BackgroundServer(app) as url: ...      # stops when the block ends
    """

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning"):
        import socket
        import threading

        import uvicorn

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.url = f"http://{host}:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level=log_level, timeout_graceful_shutdown=2))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise NanochatError("the server did not start")
            time.sleep(0.02)
        return self.url

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()
