"""`rsp serve` under concurrency: does dynamic batching pay, and does the server hold up?

Why: the server's claim is that many small requests cost about what one batched `rsp.generate` call
costs, and that a long stream of concurrent requests neither fails nor grows the server's memory. Two
parts, run in one process against one `rsp serve` subprocess (same engine, dtype and lengths):

(a) throughput: 16 concurrent clients, each sending one prompt with n=1, against one `rsp.generate`
    call with the same 16 attempts, alternated for `--rounds` rounds; greedy decoding and one RSP seed
    for all attempts so both sides decode the same number of tokens. Prints tokens/s of each and the
    ratio (issue #14's target: >= 0.8).
(b) soak: `--clients` concurrent clients x n=`--n` for `--soak-seconds`, each client sending its next
    request as soon as the last returned; counts failed and lost requests (an error status, a transport
    error, or a wrong number of choices) and samples the server's resident memory every few seconds.

    OMP_NUM_THREADS=1 python benchmarks/serve_concurrency.py              # both parts (~6 min on 2 cores)
    OMP_NUM_THREADS=1 python benchmarks/serve_concurrency.py --soak-seconds 0   # throughput only

Only loopback traffic; every loop is bounded in count and time.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

MODEL = "smollm2-135m-instruct"
PROMPTS = [
    f"Question: what is {a} + {b}? Think step by step.\nAnswer:"
    for a, b in [
        (3, 4),
        (12, 9),
        (7, 7),
        (25, 17),
        (40, 2),
        (8, 13),
        (99, 1),
        (6, 28),
        (14, 14),
        (31, 5),
        (2, 2),
        (17, 26),
        (50, 50),
        (9, 8),
        (11, 21),
        (4, 36),
    ]
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


class Server:
    def __init__(self, args: argparse.Namespace, log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log
        self.log = open(log, "w")  # noqa: SIM115 - closed in stop()
        cmd = [
            sys.executable,
            "-m",
            "rsp.cli",
            "serve",
            "--model",
            args.model,
            "--engine",
            args.engine,
            "--dtype",
            args.dtype,
            "--port",
            str(self.port),
            "--max-batch-size",
            str(args.max_batch_size),
            "--batch-wait-ms",
            str(args.batch_wait_ms),
            "--max-tokens-limit",
            "256",
        ]
        self.proc = subprocess.Popen(
            cmd,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")},
        )
        deadline = time.monotonic() + 300
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {log.read_text()[-2000:]}")
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("server did not start")
            time.sleep(0.5)

    def batches_since(self, offset: int) -> list[tuple[int, float]]:
        """(rows, engine seconds) of each batch the server logged after `offset`."""
        text = self.log_path.read_text()[offset:]
        return [
            (int(m.group(1)), float(m.group(2)))
            for m in re.finditer(r"batch \d+: (\d+) rows from .* in ([0-9.]+) s", text)
        ]

    def log_size(self) -> int:
        return len(self.log_path.read_text())

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(120)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def concurrent_round(server: Server, args: argparse.Namespace, seed: int) -> tuple[float, int, list[str]]:
    """16 clients at once, one prompt each; returns (seconds, completion tokens, texts)."""
    barrier = threading.Barrier(len(PROMPTS))
    out: list[dict | None] = [None] * len(PROMPTS)
    clients = [httpx.Client(timeout=600) for _ in PROMPTS]

    def one(i: int) -> None:
        body = {
            "model": MODEL,
            "prompt": PROMPTS[i],
            "n": 1,
            "max_tokens": args.max_tokens,
            "temperature": 0,
            "seed": seed,
        }
        barrier.wait()
        r = clients[i].post(server.url + "/v1/completions", json=body)
        r.raise_for_status()
        out[i] = r.json()

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(PROMPTS))]
    for c in clients:  # connect first, so the round measures requests, not TCP set-up
        c.get(server.url + "/health")
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - start
    for c in clients:
        c.close()
    assert all(o is not None for o in out)
    tokens = sum(o["usage"]["completion_tokens"] for o in out)  # type: ignore[index]
    return seconds, tokens, [o["choices"][0]["text"] for o in out]  # type: ignore[index]


def throughput(server: Server, args: argparse.Namespace) -> None:
    import torch

    import rsp

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    gen = rsp.Generator(args.model, engine=args.engine, dtype=args.dtype)
    keys = ["0"] * len(PROMPTS)  # every attempt gets the seed a lone n=1 request gets: same RSP on both sides

    def direct(seed: int) -> tuple[float, int, list[str]]:
        start = time.perf_counter()
        outs = gen.generate(
            PROMPTS,
            n=1,
            seed=seed,
            temperature=0,
            max_new_tokens=args.max_tokens,
            chat=False,
            keys=keys,
            batch_size=args.max_batch_size,
        )
        seconds = time.perf_counter() - start
        return seconds, sum(len(o.samples[0].token_ids) for o in outs), [o.samples[0].text for o in outs]

    concurrent_round(server, args, 0)  # warm-up: first-request costs on both sides
    direct(0)
    rows = []
    for r in range(args.rounds):  # alternate which side goes first: the machine's load drifts
        if r % 2:
            d_sec, d_tok, d_texts = direct(100 + r)
        offset = server.log_size()
        s_sec, s_tok, s_texts = concurrent_round(server, args, 100 + r)
        batches = server.batches_since(offset)
        if not r % 2:
            d_sec, d_tok, d_texts = direct(100 + r)
        same = sum(a == b for a, b in zip(s_texts, d_texts, strict=True))
        rows.append((s_tok / s_sec, d_tok / d_sec, len(batches) == 1))
        print(
            f"round {r}: server {s_tok} tokens in {s_sec:.2f} s ({s_tok / s_sec:.1f} tok/s; batches of "
            f"{[b for b, _ in batches]} rows, engine {sum(t for _, t in batches):.2f} s); "
            f"rsp.generate {d_tok} tokens in {d_sec:.2f} s ({d_tok / d_sec:.1f} tok/s); "
            f"ratio {s_tok / s_sec / (d_tok / d_sec):.2f}; "
            f"identical texts {same}/16",
            flush=True,
        )
    ratio = statistics.median(s / d for s, d, _ in rows)
    one = [s / d for s, d, single in rows if single]
    print(
        f"(a) throughput ratio server / rsp.generate, median of {args.rounds} rounds: {ratio:.2f} "
        "(target >= 0.8); "
        f"{len(one)} rounds ran as one batch"
        + (f" (their median ratio {statistics.median(one):.2f})" if one else ""),
        flush=True,
    )


def soak(server: Server, args: argparse.Namespace) -> None:
    deadline = time.monotonic() + args.soak_seconds
    ok = [0] * args.clients
    failed: list[str] = []
    lock = threading.Lock()
    samples: list[tuple[float, float]] = []
    start = time.monotonic()

    def client(i: int) -> None:
        with httpx.Client(timeout=600) as c:
            k = 0
            while time.monotonic() < deadline and k < 100_000:
                body = {
                    "model": MODEL,
                    "prompt": PROMPTS[(i + k) % len(PROMPTS)],
                    "n": args.n,
                    "max_tokens": args.soak_max_tokens,
                    "temperature": 0.7,
                }
                k += 1
                try:
                    r = c.post(server.url + "/v1/completions", json=body)
                    good = r.status_code == 200 and len(r.json()["choices"]) == args.n
                    why = f"status {r.status_code}: {r.text[:200]}" if not good else ""
                except (httpx.HTTPError, ValueError) as exc:
                    good, why = False, f"{type(exc).__name__}: {exc}"
                if good:
                    ok[i] += 1
                else:
                    with lock:
                        failed.append(why)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(args.clients)]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        samples.append((time.monotonic() - start, rss_mib(server.proc.pid)))
        time.sleep(args.rss_every)
    for t in threads:
        t.join()
    seconds = time.monotonic() - start
    health = httpx.get(server.url + "/health").json()
    done = sum(ok)
    print(
        f"(b) soak: {args.clients} clients x n={args.n}, max_tokens {args.soak_max_tokens}, {seconds:.0f} s: "
        f"{done} requests ok ({done * args.n} samples, {done / seconds:.2f} req/s), "
        f"{len(failed)} failed or lost; "
        f"server ran {health['batches']} batches, {health['rows']} rows in all",
        flush=True,
    )
    for why in failed[:5]:
        print("   failure:", why)
    half = [m for t, m in samples if t >= samples[-1][0] / 2]
    first_half = [m for t, m in samples if t < samples[-1][0] / 2]
    print(f"    server RSS (MiB) every {args.rss_every:.0f} s: " + " ".join(f"{m:.0f}" for _, m in samples))
    print(
        f"    RSS first half median {statistics.median(first_half):.0f} MiB, second half median "
        f"{statistics.median(half):.0f} MiB, max {max(m for _, m in samples):.0f} MiB",
        flush=True,
    )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=MODEL)
    p.add_argument("--engine", default="hf")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--max-batch-size", type=int, default=32)
    p.add_argument("--batch-wait-ms", type=float, default=20.0)
    p.add_argument("--max-tokens", type=int, default=32, help="(a) new tokens per attempt")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--soak-seconds", type=float, default=180)
    p.add_argument("--soak-max-tokens", type=int, default=8)
    p.add_argument("--clients", type=int, default=64)
    p.add_argument("--n", type=int, default=4)
    p.add_argument("--rss-every", type=float, default=10.0)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        server = Server(args, Path(tmp) / "server.log")
        try:
            print(
                f"server: {args.model}, engine {args.engine}, dtype {args.dtype}, "
                f"max batch {args.max_batch_size}, "
                f"batch wait {args.batch_wait_ms} ms, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}",
                flush=True,
            )
            if args.rounds:
                throughput(server, args)
            if args.soak_seconds > 0:
                soak(server, args)
        finally:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
