"""`rsp serve`: the batcher's rules on a fake engine (fast), then the real server over HTTP.

The HTTP tests start `rsp serve` as a subprocess on a free port with the packaged SmolLM2 (one server
per module, plus one with an API key and tiny batches for auth, disconnects and SIGTERM) and talk to it
the way users do: the `openai` client, raw HTTP, and lm-eval's `local-completions` when installed.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="rsp serve needs the 'serve' extra (fastapi, uvicorn, openai)")
httpx = pytest.importorskip("httpx")

from conftest import claim_once_per_session  # noqa: E402

from rsp.core.injection import NoInjection  # noqa: E402
from rsp.core.insert import PromptTokens  # noqa: E402
from rsp.core.seeds import derive_seed  # noqa: E402
from rsp.engines import Completion, SamplingConfig  # noqa: E402
from rsp.server.batcher import Batcher, Job, RowResult  # noqa: E402

MODEL = "smollm2-135m-instruct"
# One xdist worker for the file (scripts/test.sh runs `--dist loadgroup`): its module-scoped servers, each a
# SmolLM2 subprocess of about 15 s, start once instead of once per worker that gets one of their tests.
pytestmark = pytest.mark.xdist_group("server")


# ---------------------------------------------------------------------------------------------- fake engine
class SeededInjection(NoInjection):
    """No vectors, but per-attempt seeds like RSP's, so the batcher's seed bookkeeping is visible."""

    name = "seeded"

    def seed_for(self, base_seed: int, problem_id: str, attempt: int) -> int | None:
        return derive_seed(base_seed, "rsp", problem_id, attempt)


class FakeGenerator:
    """Records every engine call; fails a batch holding the poison token; can hold the first call."""

    POISON = 999

    def __init__(self, hold: threading.Event | None = None) -> None:
        self.calls: list[dict] = []
        self.hold = hold
        self.started = threading.Event()

    def run(self, prompts, injection, seeds, sampling, *, decode_seed, stop_strings=()):
        self.calls.append(
            {"rows": len(prompts), "seeds": list(seeds), "decode_seed": decode_seed, "sampling": sampling}
        )
        self.started.set()
        if self.hold is not None:
            self.hold.wait(10)
            self.hold = None
        if any(self.POISON in p.ids for p in prompts):
            raise RuntimeError("poisoned prompt")
        return [Completion((1, 2), f"{p.ids[0]}:{s}", "length") for p, s in zip(prompts, seeds, strict=True)]


def make_job(name: str, first_token: int, *, n: int = 1, seed: int = 0, max_tokens: int = 4, sink=None):
    results: list[RowResult] = []
    sampling = SamplingConfig(temperature=0.0, max_new_tokens=max_tokens)
    injection = SeededInjection()
    job = Job(
        name,
        [PromptTokens((first_token, 5), 2)],
        n,
        injection,
        (("seeded",), sampling, ()),
        sampling,
        (),
        seed,
        sink or results.append,
    )
    return job, results


def wait_until(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.01)


def test_concurrent_jobs_share_one_engine_batch():
    gen = FakeGenerator()
    batcher = Batcher(gen, max_batch_size=16, batch_wait_s=0.5)
    jobs = [make_job(f"j{i}", 10 + i) for i in range(16)]
    batcher.start()
    for job, _ in jobs:
        batcher.submit(job)
    wait_until(lambda: all(len(r) == 1 for _, r in jobs))
    batcher.close()
    assert [c["rows"] for c in gen.calls] == [16]
    assert all(r[0].batch is not None and r[0].batch[1:] == (16, 16) for _, r in jobs)  # (rows, jobs)


def test_a_burst_longer_than_the_wait_still_shares_one_batch_when_its_gaps_are_short():
    gen = FakeGenerator()
    batcher = Batcher(gen, max_batch_size=16, batch_wait_s=0.1)  # quiet gap 0.1 s, oldest row waits <= 1 s
    jobs = [make_job(f"j{i}", 10 + i) for i in range(6)]
    batcher.start()
    for job, _ in jobs:  # 6 arrivals 0.03 s apart: the burst lasts 0.15 s, longer than the 0.1 s wait
        batcher.submit(job)
        time.sleep(0.03)
    wait_until(lambda: all(r for _, r in jobs))
    batcher.close()
    assert [c["rows"] for c in gen.calls] == [6]


def test_rows_with_different_sampling_settings_run_in_separate_batches():
    gen = FakeGenerator()
    batcher = Batcher(gen, max_batch_size=16, batch_wait_s=0.2)
    a, ra = make_job("a", 10, max_tokens=4)
    b, rb = make_job("b", 11, max_tokens=8)
    batcher.start()
    batcher.submit(a)
    batcher.submit(b)
    wait_until(lambda: ra and rb)
    batcher.close()
    assert sorted(c["sampling"].max_new_tokens for c in gen.calls) == [4, 8]


def test_batches_hold_at_most_max_batch_size_rows():
    gen = FakeGenerator()
    batcher = Batcher(gen, max_batch_size=3, batch_wait_s=0.05)
    job, results = make_job("big", 10, n=8)
    batcher.start()
    batcher.submit(job)
    wait_until(lambda: len(results) == 8)
    batcher.close()
    assert [c["rows"] for c in gen.calls] == [3, 3, 2]


def test_a_failing_request_does_not_fail_the_requests_batched_with_it():
    gen = FakeGenerator()
    batcher = Batcher(gen, max_batch_size=8, batch_wait_s=0.5)
    good, good_results = make_job("good", 10, n=2)
    bad, bad_results = make_job("bad", FakeGenerator.POISON)
    batcher.start()
    batcher.submit(good)
    batcher.submit(bad)
    wait_until(lambda: len(good_results) == 2 and len(bad_results) == 1)
    batcher.close()
    assert gen.calls[0]["rows"] == 3  # tried together first
    assert all(r.error is None and r.completion is not None for r in good_results)
    assert isinstance(bad_results[0].error, RuntimeError)


def test_a_cancelled_request_loses_its_queued_rows():
    hold = threading.Event()
    gen = FakeGenerator(hold)
    batcher = Batcher(gen, max_batch_size=2, batch_wait_s=0.0)
    first, first_results = make_job("first", 10, n=2)
    gone, gone_results = make_job("gone", 11, n=6)
    batcher.start()
    batcher.submit(first)
    assert gen.started.wait(5)  # the first batch is running and held
    batcher.submit(gone)
    assert batcher.cancel(gone) == 6
    hold.set()
    wait_until(lambda: len(first_results) == 2)
    batcher.close()
    assert [c["rows"] for c in gen.calls] == [2]
    assert gone_results == [] and batcher.rows_dropped == 6


def test_seeds_follow_rsp_generate():
    from rsp.generation import WorkBatch, decode_seed_for

    gen = FakeGenerator()
    batcher = Batcher(gen, max_batch_size=8, batch_wait_s=0.0)
    job, results = make_job("seeded", 10, n=3, seed=42)
    batcher.start()
    batcher.submit(job)
    wait_until(lambda: len(results) == 3)
    batcher.close()
    by_index = {r.index: r for r in results}
    assert [by_index[a].rsp_seed for a in range(3)] == [derive_seed(42, "rsp", "0", a) for a in range(3)]
    # a request alone in its batch decodes with rsp.generate's seed for its first batch
    assert gen.calls[0]["decode_seed"] == decode_seed_for(42, WorkBatch("seeded", 0, 0, ()))


def test_binding_beyond_loopback_requires_an_api_key(monkeypatch):
    from rsp.cli import main
    from rsp.server.cli import is_loopback

    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5")
    monkeypatch.delenv("RSP_API_KEY", raising=False)
    assert main(["serve", "--host", "0.0.0.0", "--model", "/nonexistent"]) == 2


def test_the_served_name_never_reveals_a_local_path(tmp_path):
    from rsp.server.cli import served_name

    (tmp_path / "my-model").mkdir()
    assert served_name(str(tmp_path / "my-model")) == "my-model"
    assert served_name("/somewhere/model.Q4.gguf") == "model.Q4"
    assert served_name(MODEL) == MODEL


def test_per_request_rsp_settings_are_built_in_a_bounded_cache(tiny_lm):
    import rsp
    from rsp.server.app import INJECTION_CACHE, RSPServer
    from rsp.server.cli import ServeCommandConfig

    gen = rsp.Generator(tiny_lm)
    server = RSPServer(gen, ServeCommandConfig(served_model_name="tiny", rsp_length=4))
    default = server.injection(rsp.RSPConfig(length=4))
    assert default is gen.injection(rsp.RSPConfig(length=4))
    for i in range(INJECTION_CACHE + 20):  # a client sending ever new scales
        inj = server.injection(rsp.RSPConfig(length=2, scale=1 + i / 1000))
        assert inj.length == 2 and inj.scale == pytest.approx(1 + i / 1000)
    assert server.build.cache_info().currsize == INJECTION_CACHE
    assert len(gen._injections) == 1  # only the server's own settings are kept for good
    assert isinstance(server.injection(None), NoInjection)


def test_schema_errors_name_the_field():
    from rsp.server.protocol import APIError, CompletionRequest, parse_request

    with pytest.raises(APIError) as exc:
        parse_request(CompletionRequest, {"model": MODEL, "prompt": "x", "temprature": 0.5})
    assert (exc.value.status, exc.value.param, exc.value.code) == (422, "temprature", "unknown_field")
    with pytest.raises(APIError) as exc:
        parse_request(
            CompletionRequest, {"model": MODEL, "prompt": "x", "rsp": {"options": {"soft_prompt": "/x"}}}
        )
    assert (exc.value.status, exc.value.param) == (422, "rsp.options")


# ---------------------------------------------------------------------------------------------- body limit
def _drive_gate(headers: dict, chunks: int, chunk_bytes: int):
    """Runs one request through Gate with a fake ASGI server; returns (events in order, response start,
    peak Python memory while it ran). The app behind the gate must never be reached."""
    import asyncio
    import tracemalloc

    from rsp.server.app import Gate
    from rsp.server.cli import ServeCommandConfig

    events: list[str] = []
    sent: list[dict] = []
    left = [chunks]

    async def receive():
        if left[0] == 0:
            return {"type": "http.disconnect"}
        left[0] -= 1
        events.append("chunk")
        return {"type": "http.request", "body": bytes(chunk_bytes), "more_body": left[0] > 0}

    async def send(message):
        events.append(message["type"])
        sent.append(message)

    async def app(scope, receive, send):
        raise AssertionError("an over-limit request must not reach the app")

    gate = Gate(app, ServeCommandConfig(max_body_bytes=1 << 20))
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/completions",
        "headers": [(k.encode(), v.encode()) for k, v in headers.items()],
    }
    tracemalloc.start()
    try:
        asyncio.run(gate(scope, receive, send))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return events, sent[0], peak


def test_an_over_limit_body_is_read_to_its_end_and_dropped_before_the_413():
    """A client that sends its whole body before reading must find the 413 waiting, not a reset: the gate
    reads the rest of the body first, one chunk at a time (16 MB pass through, far less is ever held)."""
    size = 256 * (64 << 10)
    events, start, peak = _drive_gate({"content-length": str(size)}, chunks=256, chunk_bytes=64 << 10)
    assert events == ["chunk"] * 256 + ["http.response.start", "http.response.body"]
    assert start["status"] == 413
    assert (b"connection", b"close") not in start["headers"], "a drained connection can stay open"
    assert peak < 2 << 20, f"{peak} bytes held while draining {size}: the body was buffered"


def test_a_body_announced_beyond_the_drain_cap_is_refused_at_once_and_the_connection_closed():
    events, start, _ = _drive_gate({"content-length": str(1 << 30)}, chunks=4, chunk_bytes=1024)
    assert events == ["http.response.start", "http.response.body"]  # nothing read
    assert start["status"] == 413 and (b"connection", b"close") in start["headers"]


def test_a_client_waiting_for_100_continue_gets_the_413_without_being_asked_for_its_body():
    headers = {"content-length": str(4 << 20), "expect": "100-continue"}
    events, start, _ = _drive_gate(headers, chunks=64, chunk_bytes=64 << 10)
    assert events == ["http.response.start", "http.response.body"] and start["status"] == 413


# ---------------------------------------------------------------------------------------------- real server
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    def __init__(
        self, log_path: Path, *args: str, api_key: str | None = None, env: dict[str, str] | None = None
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.api_key = api_key
        env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
        env.pop("RSP_API_KEY", None)
        cmd = [sys.executable, "-m", "rsp.cli", "serve", "--model", MODEL, "--port", str(self.port), *args]
        if api_key:
            cmd += ["--api-key", api_key]
        self.log = open(log_path, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 180
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"rsp serve exited with {self.proc.returncode}:\n{self.text()[-3000:]}")
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"rsp serve did not come up:\n{self.text()[-3000:]}")
            time.sleep(0.5)

    def text(self) -> str:
        return self.log_path.read_text()

    def headers(self) -> dict:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def post(self, path: str, body, **kw) -> httpx.Response:
        kw.setdefault("timeout", 120)
        if isinstance(body, (bytes, str)):
            return httpx.post(
                self.url + path,
                content=body,
                headers={"Content-Type": "application/json", **self.headers()},
                **kw,
            )
        return httpx.post(self.url + path, json=body, headers=self.headers(), **kw)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory, request):
    claim_once_per_session(request, "server")
    srv = ServerProcess(
        tmp_path_factory.mktemp("serve") / "server.log",
        "--max-batch-size",
        "32",
        "--batch-wait-ms",
        "50",
        "--max-n",
        "8",
        "--max-tokens-limit",
        "64",
    )
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def keyed_server(tmp_path_factory, request):
    claim_once_per_session(request, "keyed_server")
    srv = ServerProcess(
        tmp_path_factory.mktemp("serve-key") / "server.log",
        "--max-batch-size",
        "2",
        "--batch-wait-ms",
        "0",
        api_key="sesame",
    )
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def client(server):
    openai = pytest.importorskip("openai")
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.mark.real_model
def test_openai_client_gets_n_completions_each_with_its_own_rsp_seed(client):
    out = client.completions.create(
        model=MODEL, prompt="The capital of France is", n=4, max_tokens=6, seed=11, temperature=0.8
    )
    assert len(out.choices) == 4 and sorted(c.index for c in out.choices) == [0, 1, 2, 3]
    seeds = [c.model_extra["rsp_seed"] for c in sorted(out.choices, key=lambda c: c.index)]
    assert len(set(seeds)) == 4
    assert seeds == [derive_seed(11, "rsp", "0", a) for a in range(4)]  # RandomSoftPrompt.seed_for
    assert out.model_extra["rsp"]["length"] == 4
    custom = client.completions.create(
        model=MODEL,
        prompt="The capital of France is",
        n=2,
        max_tokens=4,
        seed=11,
        extra_body={"rsp": {"length": 8, "scale": 0.5}},
    )
    assert custom.model_extra["rsp"] == {
        "method": "rsp",
        "length": 8,
        "scale": 0.5,
        "position": "after_generation_prompt",
    }
    chat = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Say hi."}], n=2, max_tokens=4
    )
    assert len({c.model_extra["rsp_seed"] for c in chat.choices}) == 2


@pytest.mark.real_model
def test_models_names_the_served_model_its_engine_and_injection(client, server):
    (card,) = client.models.list().data
    assert card.id == MODEL and card.model_extra["engine"] == "hf"
    assert card.model_extra["rsp"] == {
        "method": "rsp",
        "length": 4,
        "scale": 1.0,
        "position": "after_generation_prompt",
    }
    assert client.models.retrieve(MODEL).id == MODEL
    assert httpx.get(f"{server.url}/v1/models/other").json()["error"]["code"] == "model_not_found"


@pytest.mark.real_model
def test_rsp_null_returns_plain_samples_without_seeds(client):
    out = client.completions.create(
        model=MODEL, prompt="Once upon a time", n=2, max_tokens=4, seed=3, extra_body={"rsp": None}
    )
    assert [c.model_extra["rsp_seed"] for c in out.choices] == [None, None]
    assert out.model_extra["rsp"] is None
    assert all(c.text for c in out.choices)


@pytest.mark.real_model
def test_a_request_alone_in_its_batch_equals_rsp_generate_with_its_seed(server, smollm2):
    import rsp

    prompt = "Question: what is 7 + 5?\nAnswer:"
    for temperature in (0.0, 0.9):
        body = {
            "model": MODEL,
            "prompt": prompt,
            "n": 3,
            "max_tokens": 12,
            "seed": 5,
            "temperature": temperature,
        }
        served = sorted(server.post("/v1/completions", body).json()["choices"], key=lambda c: c["index"])
        expected = rsp.generate(
            smollm2, [prompt], n=3, seed=5, temperature=temperature, max_new_tokens=12, chat=False
        )[0].samples
        assert [c["text"] for c in served] == [s.text for s in expected], temperature
        assert [c["rsp_seed"] for c in served] == [s.rsp_seed for s in expected]
        assert [c["decode_seed"] for c in served] == [s.decode_seed for s in expected]
    messages = [{"role": "user", "content": "Name a fruit."}]
    chat = server.post(
        "/v1/chat/completions",
        {"model": MODEL, "messages": messages, "n": 2, "max_tokens": 8, "seed": 9, "temperature": 0},
    ).json()
    expected = rsp.generate(smollm2, [messages], n=2, seed=9, temperature=0, max_new_tokens=8)[0].samples
    assert [c["message"]["content"] for c in sorted(chat["choices"], key=lambda c: c["index"])] == [
        s.text for s in expected
    ]


@pytest.mark.real_model
def test_streaming_returns_the_same_text_as_the_plain_call(client):
    kwargs = {
        "model": MODEL,
        "prompt": "List three colors:",
        "n": 2,
        "max_tokens": 8,
        "seed": 21,
        "temperature": 0.9,
    }
    plain = {c.index: c.text for c in client.completions.create(**kwargs).choices}
    streamed: dict[int, str] = {}
    for chunk in client.completions.create(stream=True, **kwargs):
        for c in chunk.choices:
            streamed[c.index] = streamed.get(c.index, "") + c.text
    assert streamed == plain
    messages = [{"role": "user", "content": "Name a planet."}]
    chat_kwargs = {
        "model": MODEL,
        "messages": messages,
        "n": 2,
        "max_tokens": 6,
        "seed": 4,
        "temperature": 0.9,
    }
    plain = {c.index: c.message.content for c in client.chat.completions.create(**chat_kwargs).choices}
    streamed = {}
    for chunk in client.chat.completions.create(stream=True, **chat_kwargs):
        for c in chunk.choices:
            streamed[c.index] = streamed.get(c.index, "") + (c.delta.content or "")
    assert streamed == plain


@pytest.mark.real_model
def test_logprobs_score_the_sampled_tokens(server):
    body = {
        "model": MODEL,
        "prompt": "One, two, three,",
        "max_tokens": 4,
        "temperature": 0,
        "logprobs": 2,
        "seed": 1,
    }
    choice = server.post("/v1/completions", body).json()["choices"][0]
    lp = choice["logprobs"]
    assert "".join(lp["tokens"]) == choice["text"]
    for value, top in zip(lp["token_logprobs"], lp["top_logprobs"], strict=True):
        assert value <= 0 and len(top) == 2
        assert value == pytest.approx(max(top.values()), abs=0.05)  # greedy: (about) the likeliest token
    echo = server.post("/v1/completions", {**body, "echo": True}).json()["choices"][0]
    assert echo["text"].startswith("One, two, three,")
    assert echo["logprobs"]["token_logprobs"][0] is None  # nothing precedes the first prompt token


@pytest.mark.real_model
def test_32_concurrent_requests_all_succeed_and_share_batches(server):
    before = server.text().count("\n")

    def one(i: int) -> httpx.Response:
        return server.post(
            "/v1/completions",
            {"model": MODEL, "prompt": f"Count to {i}:", "max_tokens": 4, "temperature": 0.7, "seed": i},
        )

    with ThreadPoolExecutor(32) as pool:
        responses = list(pool.map(one, range(32)))
    assert [r.status_code for r in responses] == [200] * 32
    assert all(len(r.json()["choices"]) == 1 for r in responses)
    lines = server.text().splitlines()[before:]
    sizes = [int(m.group(1)) for line in lines if (m := re.search(r"batch \d+: (\d+) rows from", line))]
    assert sum(sizes) == 32
    assert len(sizes) < 32 and max(sizes) > 1, sizes  # batched, not one batch per request


BAD_INPUTS = [
    # (name, body (dict, or raw text), status, code, words in the message)
    ("malformed json", '{"model": "x", "prompt": ', 400, "invalid_json", "malformed JSON"),
    ("not an object", "[1, 2]", 400, "invalid_json", "JSON object"),
    ("unknown field", {"model": MODEL, "prompt": "x", "temprature": 0.5}, 422, "unknown_field", "temprature"),
    (
        "unknown rsp field",
        {"model": MODEL, "prompt": "x", "rsp": {"options": {"soft_prompt": "/etc/passwd"}}},
        422,
        "unknown_field",
        "rsp.options",
    ),
    ("wrong type", {"model": MODEL, "prompt": "x", "n": "4"}, 422, "invalid_value", "n"),
    ("missing prompt", {"model": MODEL}, 422, "missing_field", "prompt"),
    ("n over the limit", {"model": MODEL, "prompt": "x", "n": 9}, 400, "n_too_large", "limit of 8"),
    (
        "max_tokens over the limit",
        {"model": MODEL, "prompt": "x", "max_tokens": 65},
        400,
        "max_tokens_too_large",
        "limit of 64",
    ),
    (
        "prompt longer than the context",
        {"model": MODEL, "prompt": "word " * 9000},
        400,
        "context_length_exceeded",
        "context of 8192",
    ),
    ("unknown model", {"model": "gpt-4o", "prompt": "x"}, 404, "model_not_found", "not served"),
    ("model given as a path", {"model": "/etc/passwd", "prompt": "x"}, 404, "model_not_found", "not served"),
    (
        "unknown rsp method",
        {"model": MODEL, "prompt": "x", "rsp": {"method": "nope"}},
        400,
        "invalid_rsp",
        "nope",
    ),
    (
        "rsp method that needs a server-side file",
        {"model": MODEL, "prompt": "x", "rsp": {"method": "soft-prompt"}},
        400,
        "invalid_rsp",
        "soft-prompt",
    ),
    (
        "rsp too long",
        {"model": MODEL, "prompt": "x", "rsp": {"length": 65}},
        400,
        "rsp_too_long",
        "rsp.length",
    ),
    (
        "token id outside the vocabulary",
        {"model": MODEL, "prompt": [1, 2, 10**9]},
        400,
        "invalid_token",
        "outside the vocabulary",
    ),
    (
        "placeholder token in the prompt",
        {"model": MODEL, "prompt": "a <empty_output> b"},
        400,
        "reserved_token",
        "reserves",
    ),
    (
        "unsupported penalty",
        {"model": MODEL, "prompt": "x", "presence_penalty": 1.0},
        400,
        "unsupported_parameter",
        "presence_penalty",
    ),
    (
        "negative temperature",
        {"model": MODEL, "prompt": "x", "temperature": -1},
        422,
        "invalid_value",
        "temperature",
    ),
    ("body over the size limit", {"model": MODEL, "prompt": "x" * (1 << 20)}, 413, "body_too_large", "limit"),
]


@pytest.mark.real_model
def test_bad_inputs_get_openai_errors_and_the_server_stays_healthy(server):
    for name, body, status, code, words in BAD_INPUTS:
        r = server.post("/v1/completions", body)
        assert r.status_code == status, (name, r.text)
        err = r.json()["error"]
        assert set(err) == {"message", "type", "param", "code"}, name
        assert err["code"] == code and words in err["message"], (name, err)
    chat = server.post(
        "/v1/chat/completions", {"model": MODEL, "messages": [{"role": "tool", "content": "x"}]}
    )
    assert chat.status_code == 422 and chat.json()["error"]["param"].startswith("messages")
    assert httpx.get(server.url + "/v1/nowhere").json()["error"]["code"] == "not_found"
    wrong_method = httpx.delete(server.url + "/v1/models")
    assert wrong_method.status_code == 405 and wrong_method.json()["error"]["code"] == "method_not_allowed"
    assert httpx.get(server.url + "/health").json()["status"] == "ok"
    ok = server.post("/v1/completions", {"model": MODEL, "prompt": "Hello", "max_tokens": 2})
    assert ok.status_code == 200


def _post_raw(url: str, body: bytes, *, chunked: bool) -> tuple[int, dict]:
    """POST the way plain clients do: send the whole body, then read the response (http.client)."""
    import http.client
    from urllib.parse import urlparse

    u = urlparse(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=120)
    try:
        if chunked:  # no Content-Length: the limit is only found while reading (read_json)
            pieces = (body[i : i + (256 << 10)] for i in range(0, len(body), 256 << 10))
            conn.request("POST", "/v1/completions", body=pieces, encode_chunked=True)
        else:
            conn.request("POST", "/v1/completions", body=body, headers={"Content-Type": "application/json"})
        r = conn.getresponse()
        return r.status, json.loads(r.read())
    finally:
        conn.close()


@pytest.mark.real_model
def test_every_over_limit_upload_gets_the_413_json_not_a_reset(server):
    """12 uploads of 2 and 4 MB with Content-Length, and 12 chunked ones without it, each sent whole before
    the response is read: every one gets the JSON error, and the server stays healthy."""
    outcomes = []
    for i in range(24):
        size = (2 << 20) if i % 2 else (4 << 20)
        body = json.dumps({"model": MODEL, "prompt": "x" * size}).encode()
        try:
            status, payload = _post_raw(server.url, body, chunked=i >= 12)
            outcomes.append((status, payload["error"]["code"]))
        except OSError as exc:  # a reset or a broken pipe: what this test exists to rule out
            outcomes.append((0, type(exc).__name__))
    assert outcomes == [(413, "body_too_large")] * 24
    assert httpx.get(server.url + "/health").json()["status"] == "ok"


@pytest.mark.real_model
def test_lm_eval_local_completions_runs_two_document_tasks(server, smollm2, tmp_path):
    """A generation task and a log-likelihood task (lm-eval sends token ids with echo + logprobs); the
    log-likelihoods equal a plain forward's, since the RSP sits after the scored tokens."""
    lm_eval = pytest.importorskip("lm_eval", reason="lm-eval is not installed (the 'lm-eval' extra)")
    for needed in (
        "tenacity",
        "aiohttp",
        "requests",
    ):  # lm-eval's own [api] extra, which local-completions needs
        pytest.importorskip(
            needed, reason=f"lm-eval's local-completions needs {needed} (pip install 'lm-eval[api]')"
        )
    import torch
    from lm_eval.tasks import TaskManager

    from rsp.models.loading import resolve_model_dir

    docs = tmp_path / "docs.jsonl"
    docs.write_text(
        "".join(
            json.dumps(d) + "\n"
            for d in [
                {"question": "What is 2 + 2?", "answer": "4", "choices": ["4", "5"], "label": 0},
                {
                    "question": "How many legs does a cat have?",
                    "answer": "4",
                    "choices": ["two", "four"],
                    "label": 1,
                },
            ]
        )
    )
    common = f"""dataset_path: json
dataset_kwargs:
  data_files:
    test: {docs}
test_split: test
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
"""
    (tmp_path / "gen.yaml").write_text(
        common
        + """task: rsp_serve_gen
output_type: generate_until
doc_to_target: "{{answer}}"
generation_kwargs:
  until: ["\\n"]
  max_gen_toks: 6
  do_sample: false
metric_list:
  - metric: exact_match
"""
    )
    (tmp_path / "mc.yaml").write_text(
        common
        + """task: rsp_serve_mc
output_type: multiple_choice
doc_to_choice: "{{choices}}"
doc_to_target: "{{label}}"
metric_list:
  - metric: acc
"""
    )
    tokenizer_dir = resolve_model_dir(MODEL)[0]
    results = lm_eval.simple_evaluate(
        model="local-completions",
        model_args=f"model={MODEL},base_url={server.url}/v1/completions,tokenizer={tokenizer_dir},max_retries=1",
        tasks=["rsp_serve_gen", "rsp_serve_mc"],
        task_manager=TaskManager(include_path=str(tmp_path)),
    )
    gen = results["samples"]["rsp_serve_gen"]
    assert len(gen) == 2 and all(isinstance(s["resps"][0][0], str) for s in gen)
    assert results["results"]["rsp_serve_mc"]["acc,none"] in (0.0, 0.5, 1.0)
    tok = smollm2.tokenizer
    for sample in results["samples"]["rsp_serve_mc"]:
        for (context, continuation), resp in zip(sample["arguments"], sample["resps"], strict=True):
            ctx = tok(context)["input_ids"]
            ids = tok(context + continuation)["input_ids"]
            with torch.no_grad():
                logp = torch.log_softmax(smollm2.model(torch.tensor([ids])).logits[0].float(), -1)
            expected = sum(float(logp[i - 1, ids[i]]) for i in range(len(ctx), len(ids)))
            # bf16: appending 5 tokens to a prompt moves its own log-probs by up to 0.11 (sequence shapes
            # change the rounding); a misaligned token would be off by nats
            assert resp[0][0] == pytest.approx(expected, abs=0.3), (context, continuation)


@pytest.mark.real_model
def test_a_wrong_or_missing_api_key_gets_401(keyed_server):
    body = {"model": MODEL, "prompt": "Hi", "max_tokens": 2}
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "sesame"}):
        r = httpx.post(keyed_server.url + "/v1/completions", json=body, headers=headers, timeout=30)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key", headers
    assert httpx.get(keyed_server.url + "/v1/models").status_code == 401
    assert httpx.get(keyed_server.url + "/health").status_code == 200  # open, for probes
    assert keyed_server.post("/v1/completions", body).status_code == 200


@pytest.mark.real_model
def test_a_client_that_disconnects_stops_costing_compute(keyed_server):
    rows_before = httpx.get(keyed_server.url + "/health").json()["rows"]
    body = {"model": MODEL, "prompt": "Write a long story:", "max_tokens": 24, "temperature": 0.7}
    busy = threading.Thread(target=keyed_server.post, args=("/v1/completions", {**body, "n": 2}))
    busy.start()  # holds the worker for one batch, so the next request's rows wait in the queue
    wait_until(lambda: httpx.get(keyed_server.url + "/health").json()["busy"], timeout=30)
    with pytest.raises(httpx.TimeoutException):
        keyed_server.post("/v1/completions", {**body, "n": 8}, timeout=0.5)  # 4 batches of 2; gives up
    busy.join(120)
    wait_until(lambda: "dropped" in keyed_server.text(), timeout=60)
    wait_until(lambda: not httpx.get(keyed_server.url + "/health").json()["busy"], timeout=60)
    health = httpx.get(keyed_server.url + "/health").json()
    assert health["rows_dropped"] >= 2
    assert health["rows"] - rows_before < 2 + 8  # not every row of the abandoned request ran
    assert re.search(r"POST /v1/completions 499 .*n=8", keyed_server.text())


@pytest.mark.real_model
def test_sigterm_finishes_the_request_in_flight_then_exits(keyed_server):
    body = {"model": MODEL, "prompt": "Tell me about the sea.", "max_tokens": 24, "n": 2}
    result: dict = {}
    t = threading.Thread(target=lambda: result.update(r=keyed_server.post("/v1/completions", body)))
    t.start()
    wait_until(lambda: httpx.get(keyed_server.url + "/health").json()["busy"], timeout=30)
    keyed_server.proc.send_signal(signal.SIGTERM)
    t.join(120)
    assert result["r"].status_code == 200 and len(result["r"].json()["choices"]) == 2
    # uvicorn re-raises the signal once its graceful shutdown is done, so the status is
    # "terminated by SIGTERM"
    assert keyed_server.proc.wait(60) in (0, -signal.SIGTERM)
    log = keyed_server.text()
    assert "shutting down" in log and "Application shutdown complete" in log
    # the request in flight finished after the shutdown began, and before the server stopped
    assert (
        log.index("Shutting down") < log.rindex("POST /v1/completions 200") < log.rindex("shutdown complete")
    )


def child_pids(pid: int) -> set[int]:
    """Every live descendant of `pid` (from /proc; vLLM's engine core runs as a child process)."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {c for c, p in parents.items() if p in frontier} - found
        found |= frontier
    return found


@pytest.mark.vllm
def test_vllm_engine_serves_n_rsps_and_sigterm_leaves_no_engine_process(tmp_path):
    from conftest import require_vllm

    require_vllm()
    # vLLM's default engine core, a child process (scripts/test.sh runs the other vLLM tests with the core
    # in-process, VLLM_ENABLE_V1_MULTIPROCESSING=0): the child is what SIGTERM must not leave behind.
    multiprocess = {"VLLM_ENABLE_V1_MULTIPROCESSING": "1"}
    srv = ServerProcess(
        tmp_path / "server.log", "--engine", "vllm", "--max-tokens-limit", "16", env=multiprocess
    )
    try:
        out = srv.post(
            "/v1/completions",
            {
                "model": MODEL,
                "prompt": "Question: what is 7 + 5?\nAnswer:",
                "n": 3,
                "max_tokens": 8,
                "temperature": 0,
                "seed": 5,
            },
        ).json()
        assert [c["rsp_seed"] for c in sorted(out["choices"], key=lambda c: c["index"])] == [
            derive_seed(5, "rsp", "0", a) for a in range(3)
        ]
        assert srv.post("/v1/completions", {"model": MODEL, "prompt": "x", "logprobs": 1}).status_code == 400
        children = child_pids(srv.proc.pid)
        assert children, "vLLM's engine core should run as a child process"
    finally:
        srv.stop()
    deadline = time.monotonic() + 60
    while any(Path(f"/proc/{c}").exists() for c in children) and time.monotonic() < deadline:
        time.sleep(0.5)
    alive = [c for c in children if Path(f"/proc/{c}").exists()]
    for c in alive:  # do not leave them running, then fail
        os.kill(c, signal.SIGKILL)
    assert not alive, f"engine processes left after SIGTERM: {alive}"
