"""Dynamic batching: one worker thread owns the `Generator`; concurrent requests share engine batches.

Why: an engine batch of 16 rows costs little more than a batch of 1 on a CPU, while each HTTP request
usually carries one or a few attempts. Every request becomes a `Job` of rows (one per attempt); the worker
takes the oldest queued row and gathers the rows that can share its batch (same injection, sampling and
stop strings) until the batch is full, no request has arrived for `batch_wait_s` (so a burst of clients
shares one batch), or the oldest row has waited `MAX_WAIT_FACTOR` times that. A cancelled job loses its
queued rows; when a shared batch raises, each job in it is retried alone.

Seeds: attempt `a` of prompt `p` of a job with request seed `s` gets `injection.seed_for(s, str(p), a)`,
as `rsp.generate(..., seed=s)` gives it; a batch holding exactly one whole job decodes with
`rsp.generate`'s first-batch seed, so such a request reproduces `rsp.generate` even when sampling.

Log-probs come after sampling, from one teacher-forced forward per row (`score_row`): the engines return
token ids only, and the inputs `rsp.core.inputs` builds give each token's distribution with the row's RSP.
They are raw (before temperature or top-p/k), as vLLM reports; in bf16 they can differ in the last bits
from the logits the engine decoded with.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from rsp.core.injection import Injection
from rsp.core.inputs import embed_continued
from rsp.core.insert import PromptTokens
from rsp.core.seeds import derive_seed
from rsp.engines import Completion, SamplingConfig
from rsp.generation import WorkBatch, decode_seed_for
from rsp.server.protocol import APIError

log = logging.getLogger("rsp.server")
MAX_WAIT_FACTOR = 10
# (token id, its log-prob or None when nothing precedes it, (id, log-prob) of the likeliest tokens)
TokenLogprob = tuple[int, float | None, tuple[tuple[int, float], ...]]


@dataclass
class RowResult:
    """One finished attempt (or its error), handed to the job's sink from the worker thread."""

    index: int
    completion: Completion | None = None
    rsp_seed: int | None = None
    decode_seed: int | None = None
    batch: tuple[int, int, int] | None = None  # the engine batch it ran in: (number, rows, jobs)
    logprobs: list[TokenLogprob] | None = None
    error: BaseException | None = None


@dataclass(eq=False)  # identity: a job is one request
class Job:
    """One request's rows. `prompts[p]` is attempted `n` times; choice index = p * n + a."""

    id: str
    prompts: Sequence[PromptTokens]
    n: int
    injection: Injection
    group: tuple  # what rows must share to be batched together (injection, sampling, stop)
    sampling: SamplingConfig
    stop: tuple[str, ...]
    seed: int
    sink: Callable[[RowResult], None]
    logprobs: int | None = None  # top-k count; None: no log-probs
    echo: bool = False
    cancelled: bool = False

    @property
    def rows(self) -> int:
        return len(self.prompts) * self.n

    def rsp_seed(self, index: int) -> int | None:
        p, a = divmod(index, self.n)
        return self.injection.seed_for(self.seed, str(p), a)


@dataclass
class Row:
    job: Job
    index: int
    enqueued: float


class Batcher:
    """The queue and its worker thread. `generator` needs `run(...)` (a `rsp.Generator`) and `lm` for
    log-probs. `submit` and `cancel` may be called from any thread; sinks run on the worker thread."""

    def __init__(self, generator: Any, max_batch_size: int, batch_wait_s: float, seed: int = 0) -> None:
        self.generator = generator
        self.max_batch_size = max_batch_size
        self.batch_wait_s = batch_wait_s
        self.seed = seed
        self._pending: list[Row] = []
        self._cond = threading.Condition()
        self._closing = False
        self._last_arrival = 0.0
        self._thread = threading.Thread(target=self._loop, name="rsp-batcher", daemon=True)
        self.batches_run = self.rows_run = self.rows_dropped = 0
        self.busy = False

    def start(self) -> None:
        self._thread.start()

    def submit(self, job: Job) -> None:
        now = time.monotonic()
        with self._cond:
            if self._closing:
                raise APIError(503, "shutting_down", "the server is shutting down")
            self._pending.extend(Row(job, i, now) for i in range(job.rows))
            self._last_arrival = now
            self._cond.notify_all()

    def cancel(self, job: Job) -> int:
        """Drop the job's queued rows; returns how many were dropped (rows already running finish)."""
        with self._cond:
            job.cancelled = True
            before = len(self._pending)
            self._pending = [r for r in self._pending if r.job is not job]
            dropped = before - len(self._pending)
            self.rows_dropped += dropped
        if dropped:
            log.info("job %s cancelled (client gone): dropped %d queued rows", job.id, dropped)
        return dropped

    @property
    def queued(self) -> int:
        return len(self._pending)

    def close(self) -> None:
        """Take no new jobs, finish every queued row, stop the worker."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join()

    def _take(self) -> list[Row] | None:
        """The next batch: the oldest row's group, once it is full, the queue has been quiet for
        `batch_wait_s`, or the oldest row has waited `MAX_WAIT_FACTOR * batch_wait_s`."""
        with self._cond:
            while True:
                if not self._pending:
                    if self._closing:
                        return None
                    self._cond.wait()
                    continue
                head = self._pending[0]
                same = [r for r in self._pending if r.job.group == head.job.group][: self.max_batch_size]
                quiet = self._last_arrival + self.batch_wait_s
                deadline = min(quiet, head.enqueued + MAX_WAIT_FACTOR * self.batch_wait_s)
                left = deadline - time.monotonic()
                if len(same) == self.max_batch_size or left <= 0 or self._closing:
                    break
                self._cond.wait(left)
            taken = {id(r) for r in same}
            self._pending = [r for r in self._pending if id(r) not in taken]
            self.busy = True
            return same

    def _loop(self) -> None:
        while (rows := self._take()) is not None:
            try:
                self._run(rows)
            except Exception as exc:  # the worker must survive anything a batch does
                log.exception("batch failed outside the engine call")
                for r in rows:
                    self._deliver(r.job, RowResult(r.index, error=exc))
            finally:
                with self._cond:
                    self.busy = False

    def _run(self, rows: list[Row]) -> None:
        rows = [r for r in rows if not r.job.cancelled]
        if not rows:
            return
        self.batches_run += 1
        batch = self.batches_run
        jobs = list(dict.fromkeys(r.job for r in rows))
        start = time.monotonic()
        try:
            results = self._generate(rows, batch, len(jobs))
        except Exception as exc:
            if len(jobs) > 1:
                log.warning("batch %d of %d jobs failed (%s); retrying each job alone", batch, len(jobs), exc)
                for job in jobs:
                    self._run([r for r in rows if r.job is job])
                return
            log.warning("batch %d failed (%s): %s", batch, jobs[0].id, exc)
            results = [RowResult(r.index, batch=(batch, len(rows), 1), error=exc) for r in rows]
        else:
            self.rows_run += len(rows)
            took = time.monotonic() - start
            first = jobs[0]
            facts = (batch, len(rows), len(jobs), first.injection.name, first.sampling.max_new_tokens, took)
            log.info("batch %d: %d rows from %d requests (%s, max_tokens %d) in %.2f s", *facts)
        for r, res in zip(rows, results, strict=True):
            self._deliver(r.job, res)

    def _generate(self, rows: list[Row], batch: int, jobs: int) -> list[RowResult]:
        job = rows[0].job
        if jobs == 1 and len(rows) == job.rows:  # rsp.generate's first batch: reproduces it when alone
            decode_seed = decode_seed_for(job.seed, WorkBatch(job.injection.name, 0, 0, ()))
        else:
            decode_seed = derive_seed(self.seed, "serve-decode", batch)
        prompts = [r.job.prompts[r.index // r.job.n] for r in rows]
        seeds = [r.job.rsp_seed(r.index) for r in rows]
        done = self.generator.run(
            prompts, job.injection, seeds, job.sampling, decode_seed=decode_seed, stop_strings=job.stop
        )
        out = []
        for r, p, s, c in zip(rows, prompts, seeds, done, strict=True):
            res = RowResult(r.index, c, s, decode_seed, (batch, len(rows), jobs))
            if r.job.logprobs is not None:
                try:
                    res.logprobs = score_row(self.generator.lm, p, r.job, s, c)
                except Exception as exc:  # fails this row's request only
                    res.error = exc
            out.append(res)
        return out

    @staticmethod
    def _deliver(job: Job, result: RowResult) -> None:
        try:
            job.sink(result)
        except Exception:  # a closed event loop must not stop the worker
            log.debug("could not deliver a result of job %s", job.id, exc_info=True)


def score_row(
    lm, prompt: PromptTokens, job: Job, seed: int | None, completion: Completion
) -> list[TokenLogprob]:
    """Log-probs of the completion tokens (and, with the job's `echo`, of the prompt's own tokens, skipping
    the slots) for one row, each with its `job.logprobs` likeliest tokens. With `echo`, the stop token the
    engines drop ends the list: scorers such as lm-eval's `local-completions` read every value but the last.
    """
    injection, top_k, echo = job.injection, job.logprobs or 0, job.echo
    model = getattr(lm, "model", None)  # the vllm engine's EmbeddingModel has none
    if model is None:
        raise ValueError("log-probs need the model's weights in this process (hf, lean or prefix engine)")
    tokens = list(completion.token_ids)
    seq = embed_continued(lm.embed, [prompt], injection, [seed], [tokens], pad_id=lm.pad_token_id)
    batch, width = seq.batch, seq.prompt_width
    keep = seq.embeds.shape[1] if echo else len(tokens) + 1
    with torch.no_grad():
        out = seq.forward(model, keep)
    logp = torch.log_softmax(out.logits[0].float(), dim=-1)  # (keep, V)
    offset = seq.embeds.shape[1] - keep  # absolute column of logp[0]

    columns: list[tuple[int, int]] = []  # (column whose logits predict the token or -1: none, token id)
    if echo:
        real = (batch.attention_mask[0].bool() & ~batch.slot_mask()[0]).tolist()
        ids = batch.input_ids[0].tolist()
        prompt_columns = [c for c in range(width) if real[c]]
        columns = [(c - 1 if i else -1, ids[c]) for i, c in enumerate(prompt_columns)]
    ended = [completion.stop_token] if echo and completion.stop_token is not None else []
    columns += [(width - 1 + t, tok) for t, tok in enumerate([*tokens, *ended])]

    scored: list[TokenLogprob] = []
    for col, tok in columns:
        if col < 0:
            scored.append((tok, None, ()))
            continue
        row = logp[col - offset]
        values, top = torch.topk(row, top_k)
        scored.append((tok, float(row[tok]), tuple(zip(top.tolist(), values.tolist(), strict=True))))
    return scored
