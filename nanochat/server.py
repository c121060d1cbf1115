"""The chat server: an OpenAI-compatible API and the Gradio web UI on one port (FastAPI + uvicorn).

    POST /v1/chat/completions   OpenAI chat completions: n, temperature, top_p, top_k, max_tokens, seed, stop,
                                logprobs/top_logprobs, stream (SSE chunks, `stream_options.include_usage`)
    GET  /v1/models             the one served model;  GET /v1/models/{id}: it, or 404 model_not_found
    GET  /health                liveness + slot/queue counters
    /                           the web UI (nanochat/webui.py)

The one idea: every request goes through the same `ModelPool`, and every refusal is an OpenAI-style JSON error
(`{"error": {"message", "type", "param", "code"}}`), whoever raises it: 400 (bad input, including options we
do not implement such as `tools` or a `response_format` other than text), 404 (unknown route or model), 405,
413 (a body over `limits.max_body_bytes`, refused before it is read), 503 (queue full) or 500 (a bug). A
streamed request only commits to a 200 once its first text (or its end) is ready, so an engine refusal is
still a clean 400.

`model` may be the served id, the alias "nanochat", or left out. Calculator use comes back twice: readably in
`content` ("[calculator: 12*12 = 144]") and exactly in the extra field `parts` (chat.py's assistant content
parts: text / python / python_output), which a client sends back as the assistant message's `content` to
render the very same tokens; streamed tool-use deltas carry `part` ({"type", "text"}) likewise.
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
from starlette.exceptions import HTTPException  # noqa: E402

from nanochat.chat_render import Reply  # noqa: E402
from nanochat.common import NanochatError  # noqa: E402
from nanochat.serving import (ClientGone, Limits, ModelInfo, ModelPool, RequestError, SamplingParams,  # noqa: E402
                              ServerBusy, check_conversation, check_sampling, load_replicas, pick_devices,
                              render_prompt, unless_gone)

Int = Annotated[int, Field(strict=True)]
Num = Annotated[float, Field(strict=True)]  # strict float still accepts JSON integers
ALIASES = ("nanochat",)  # names accepted for `model` besides the served id


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: str  # checked by check_conversation so that the error names the allowed roles
    content: str | list[dict[str, Any]] | None = None


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")  # harmless OpenAI options (user, store, metadata...) pass
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
    logprobs: Annotated[bool, Field(strict=True)] | None = None
    top_logprobs: Int | None = None
    # options that would change the answer's meaning: refused (400) rather than silently ignored
    tools: Any = None
    tool_choice: Any = None
    functions: Any = None
    function_call: Any = None
    response_format: Any = None


def error_response(status: int, message: str, kind: str = "invalid_request_error", param: str | None = None,
                   code: str | None = None, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": code}}, status,
                        headers=headers)


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


def _unsupported(req: ChatRequest) -> tuple[str, str] | None:
    """(message, param) for the first option we do not implement, or None."""
    if req.tools or req.functions:
        return "tools and functions are not supported (the model's only tool is its built-in calculator)", \
            "tools" if req.tools else "functions"
    for name in ("tool_choice", "function_call"):
        if getattr(req, name) not in (None, "none"):
            return f"{name} is not supported (no tools can be given)", name
    fmt = req.response_format
    if fmt is not None and not (isinstance(fmt, dict) and fmt.get("type") == "text"):
        return "response_format: only {\"type\": \"text\"} is supported", "response_format"
    if req.top_logprobs is not None and not req.logprobs:
        return "top_logprobs needs logprobs: true", "top_logprobs"
    return None


def _sse(obj) -> str:
    # ASCII-escaped JSON: a raw U+2028 or U+0085 in model text would split the event for line-based clients
    return f"data: {json.dumps(obj)}\n\n"


class _TooLarge(Exception):
    pass


class BodyLimit:
    """ASGI middleware: a body over `limit` bytes is a 413, by its Content-Length before anything is read,
    else as soon as the bytes received pass the limit (chunked uploads); the rest is never read."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, int(limit)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or ()).get(b"content-length")
        if length is not None and (not length.strip().isdigit() or int(length) > self.limit):
            return await self._refuse(send)
        seen, over = 0, False

        async def capped_receive():
            nonlocal seen, over
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    over = True
                    raise _TooLarge
            return message

        async def guarded_send(message):
            if not over:  # once over, the app's own answer (an error about the broken body) is dropped
                await send(message)

        try:
            await self.app(scope, capped_receive, guarded_send)
        except Exception:
            if not over:
                raise
        if over:
            await self._refuse(send)

    async def _refuse(self, send):
        await error_response(413, f"the request body is larger than {self.limit} bytes", param=None,
                             code="request_too_large", headers={"Connection": "close"})(
            {"type": "http"}, None, send)


def _token_logprobs(tokenizer, entries) -> list[dict]:
    """Engine (id, logprob, [(id, logprob)]) entries in OpenAI's shape (token text, its UTF-8 bytes)."""
    def one(tok, lp):
        raw = tokenizer.encoding.decode_single_token_bytes(int(tok))
        return {"token": raw.decode("utf-8", "replace"), "logprob": lp, "bytes": list(raw)}

    return [{**one(tok, lp), "top_logprobs": [one(t, v) for t, v in top]} for tok, lp, top in entries or ()]


def create_app(pool: ModelPool, info: ModelInfo, limits: Limits | None = None,
               defaults: SamplingParams | None = None, ui: bool = True) -> FastAPI:
    """The FastAPI app: API routes first, then (ui=True) the Gradio page mounted at /."""
    limits = limits or Limits()
    defaults = defaults or SamplingParams()
    context = info.sequence_len
    app = FastAPI(title="nanochat", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.pool, app.state.info = pool, info
    app.add_middleware(BodyLimit, limit=limits.max_body_bytes)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        message, param = _validation_message(exc)
        return error_response(400, message, param=param)

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException):  # 404, 405, body-parse errors
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        return error_response(exc.status_code, f"{exc.detail}: {request.method} {request.url.path}"
                              if code else str(exc.detail), code=code, headers=getattr(exc, "headers", None))

    @app.exception_handler(ClientGone)
    async def _gone(request: Request, exc: ClientGone):  # nobody reads this; its generation has stopped
        return error_response(499, str(exc), code="client_closed_request")

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception):  # a bug: still an OpenAI-shaped answer, worker lives on
        return error_response(500, f"internal error ({type(exc).__name__})", "server_error")

    def model_card():
        return {"id": info.id, "object": "model", "created": 0, "owned_by": "nanochat", "stage": info.stage,
                "params": info.params}

    def unknown_model(name: str):
        return error_response(404, f"the model {name!r} does not exist; this server serves {info.id!r}",
                              param="model", code="model_not_found")

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": info.id, **pool.stats()}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str):
        return model_card() if model_id in (info.id, *ALIASES) else unknown_model(model_id)

    @app.post("/v1/chat/completions")
    async def chat_completions(req: ChatRequest, request: Request):
        if req.model is not None and req.model not in (info.id, *ALIASES):
            return unknown_model(req.model)
        refusal = _unsupported(req)
        if refusal:
            return error_response(400, refusal[0], param=refusal[1], code="unsupported_parameter")
        try:
            conv = check_conversation([m.model_dump() for m in req.messages], limits)
            stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
            max_tokens = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
            p = check_sampling(SamplingParams(
                temperature=defaults.temperature if req.temperature is None else float(req.temperature),
                top_k=defaults.top_k if req.top_k is None else req.top_k,
                top_p=req.top_p, max_tokens=defaults.max_tokens if max_tokens is None else max_tokens,
                n=req.n, seed=req.seed, stop=tuple(stop),
                logprobs=(req.top_logprobs or 0) if req.logprobs else None), limits)
            prompt, p.max_tokens = render_prompt(pool.tokenizer, conv, context, p.max_tokens)
            deltas = pool.generate(prompt, p)
            # waits for room and the first text (errors are still a 400); a client that leaves meanwhile ends it
            first = await unless_gone(request.receive, anext(deltas, None))
        except RequestError as e:
            return error_response(400, str(e), param=e.param, code=e.code)
        except ServerBusy as e:
            return error_response(503, str(e), "server_error", code="server_busy")
        except NanochatError as e:  # the engine refused the prompt
            return error_response(400, str(e))
        rid, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        usage = {"prompt_tokens": len(prompt)}
        lp = (lambda entries: _token_logprobs(pool.tokenizer, entries)) if p.logprobs is not None else None
        if req.stream:
            include_usage = bool((req.stream_options or {}).get("include_usage"))
            return StreamingResponse(_stream(deltas, first, p.n, rid, created, info.id, usage, include_usage, lp),
                                     media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        answers, texts = [Reply() for _ in range(p.n)], [""] * p.n
        finish, tokens, logprobs = [None] * p.n, [0] * p.n, [[] for _ in range(p.n)]
        try:
            d = first
            while d is not None:
                texts[d.row] += answers[d.row].add(d.kind, d.text)
                tokens[d.row] = d.tokens
                finish[d.row] = d.finish or finish[d.row]
                if lp:
                    logprobs[d.row] += lp(d.logprobs)
                d = await unless_gone(request.receive, anext(deltas, None))  # an abandoned answer stops
        except NanochatError as e:
            return error_response(400, str(e))
        finally:
            await deltas.aclose()
        usage["completion_tokens"] = sum(tokens)
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        choices = []
        for i, a in enumerate(answers):
            message = {"role": "assistant", "content": texts[i] + a.close()}
            if a.tool_use:
                message["parts"] = a.parts
            choices.append({"index": i, "message": message, "finish_reason": finish[i] or "length",
                            "logprobs": {"content": logprobs[i], "refusal": None} if lp else None})
        return {"id": rid, "object": "chat.completion", "created": created, "model": info.id,
                "choices": choices, "usage": usage}

    routes = {"/v1/chat/completions": "POST", "/v1/models": "GET", "/health": "GET"}

    @app.api_route("/v1/{rest:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"],
                   include_in_schema=False)
    async def unknown_route(request: Request, rest: str):  # under /v1 the UI's mount never answers
        path = request.url.path
        if path in routes:
            return error_response(405, f"method not allowed: {request.method} {path}", code="method_not_allowed",
                                  headers={"Allow": routes[path]})
        return error_response(404, f"no such route: {request.method} {path}", code="not_found")

    if ui:
        import gradio as gr

        from nanochat.webui import CSS, THEME, build_ui

        app = gr.mount_gradio_app(app, build_ui(pool, info, limits, defaults), path="/", theme=THEME, css=CSS,
                                  footer_links=[], show_error=True)
    return app


async def _stream(deltas, first, n, rid, created, model, usage, include_usage, lp=None):
    """OpenAI chat.completion.chunk events; an error after the 200 is sent as an `error` event."""
    def chunk(row, delta, finish=None, logprobs=None):
        return _sse({"id": rid, "object": "chat.completion.chunk", "created": created, "model": model,
                     "choices": [{"index": row, "delta": delta, "finish_reason": finish,
                                  "logprobs": {"content": logprobs, "refusal": None} if lp else None}]})

    tokens, answers = [0] * n, [Reply() for _ in range(n)]
    try:
        for i in range(n):
            yield chunk(i, {"role": "assistant", "content": ""}, logprobs=[])
        d = first
        while d is not None:
            tokens[d.row] = d.tokens
            entries = lp(d.logprobs) if lp else None
            readable = answers[d.row].add(d.kind, d.text)
            readable += answers[d.row].close() if d.finish else ""
            if readable or entries:
                delta = {"content": readable}
                if d.kind != "text" and d.text:
                    delta["part"] = {"type": d.kind, "text": d.text}
                yield chunk(d.row, delta, logprobs=entries)
            if d.finish:
                yield chunk(d.row, {}, d.finish, logprobs=[])
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
                 limits: dict | None = None, defaults: dict | None = None, ui: bool = True, model_name=None,
                 batching: bool = True):
    """(app, info): load the model replicas and build the app (no socket yet)."""
    engines, tokenizer, info = load_replicas(ckpt, pick_devices(device, replicas))
    if model_name:
        info.id = str(model_name)
    # per replica by default: 32 rows decoded together (batching), else 4 interleaved one-request slots
    # (both measured in bench/serve.py)
    slots = max(1, -(-int(max_concurrency) // len(engines))) if max_concurrency else 32 if batching else 4
    pool = ModelPool(engines, tokenizer, slots_per_replica=slots, max_queue=int(max_queue), batching=batching)
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
