"""Judge throughput and p95 latency under faults: our async JudgeClient against a VisionThink-style thread pool.

    .venv/bin/python benchmarks/bench_judge.py [--n 4000] [--concurrency 64] [--latency 0.05] [--fault-rate 0.05]
        [--repeats 3]

What runs: the loopback OpenAI server (:mod:`visionr3.testing.openai_server`) in a SEPARATE PROCESS — 50 ms per
reply, 5% of requests faulted (timeouts, 429 with ``Retry-After``, 500, malformed 200s in equal shares), its rule
judge answering the VisionThink "Score: 0 or 1" prompt — so its CPU does not compete with the client's event loop.
Against it, side by side on the same N judgements (the server's fault draws are reset before each row, so every row
meets exactly the same faults):

* the reference under the same faults: a bare aiohttp loop with JudgeClient's retry policy (same concurrency,
  timeout, retries, backoff, ``Retry-After``, body and parser; nothing else), run ``--repeats`` times interleaved with
  ``JudgeClient``'s default config, the median run of each reported: their ratio is ``vs_bare_loop``;
* ``JudgeClient`` with each HTTP path: ``http: aiohttp`` (what the default ``http: auto`` picks for an ``http://``
  judge like this one) and ``http: openai`` (the SDK, what ``auto`` picks for ``https://`` APIs); all N submitted at
  once (``judge_many``), at most ``concurrency`` in flight;
* the baseline VisionThink used: the synchronous ``openai.OpenAI`` client's ``chat.completions.create`` in a
  ``ThreadPoolExecutor(max_workers=concurrency)``, with the same retry policy (bounded attempts, full-jitter backoff,
  ``Retry-After`` honoured, the same strict verdict parser), so it loses nothing either;
* two calibration rows against a second, fault-free server process: a bare aiohttp POST loop (no retries, no
  parsing: what this machine and the server allow at this concurrency, right now) and ``JudgeClient http=aiohttp``
  (our own cost above that floor);
* the rule grader (``visionr3.reward.grade.grade``) for scale, when importable.

Reported per row: judgements/s, the fraction of the ideal ``concurrency / latency`` (1280/s at the defaults),
p50/p95 service latency (a judgement's first attempt to its verdict, retries included, without time queued for a
slot), the time the batch's slowest 1% added at its end, lost judgements (failed after retries), wrong verdicts (vs
the rule judge's truth), HTTP attempts, client CPU ms per judgement and server CPU ms per request.

Where the ideal goes (what the rows separate): (1) the fault mix's *ceiling*, printed in the header — faulted
attempts occupy slots (a hung one for the whole client timeout) and need another attempt, so even a client with zero
CPU cost stays below the ideal; (2) the finite batch — it ends with its last late faults (``last1%``); (3) the machine
floor, the bare-loop row — with a fixed server latency the 64 in-flight requests move in lockstep and each waits for
the others' CPU on both sides (``--jitter 0.2``, the same mean latency, desynchronises them; a diagnostic only, the
headline keeps the fixed latency); on a shared machine also the load average, printed. Timings are printed, never
asserted; the last line is machine-readable::

    efficiency=<JudgeClient, default config / ideal> speedup_vs_threadpool=<its throughput / the pool's>
    lost=<judgements lost over its runs> vs_bare_loop=<its throughput / the bare retry loop's, same faults>
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

FAULT_MIX = {"timeout": 1.0, "rate_limit": 1.0, "server_error": 1.0, "malformed": 1.0}
WORDS = ("red", "blue", "two", "left", "a cat", "the sign says STOP", "3.5 cm", "yes", "no", "Elena Ferrante")
MODEL = "stub-judge"


@dataclass
class Row:
    name: str
    n: int
    wall: float
    latencies: list[float]
    lost: int
    wrong: int
    client_cpu: float
    server_cpu: float
    server_requests: int
    errors: dict[str, int] = field(default_factory=dict)
    tail: float = float("nan")

    @property
    def throughput(self) -> float:
        return self.n / self.wall


def tail_seconds(done: list[float], start: float, wall: float) -> float:
    """How long the last 1% of a batch took: the batch ends with its slowest judgements (a late timeout plus its
    retry), a cost that a longer batch amortises."""
    ordered = sorted(done)
    return start + wall - ordered[max(0, int(0.99 * len(ordered)) - 1)] if ordered else float("nan")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] if ordered else float("nan")


def workload(n: int, tag: str) -> list[tuple[str, str, str]]:
    """N distinct (question, ground truth, prediction) triples, about half of them correct."""
    items = []
    for i in range(n):
        truth = WORDS[i % len(WORDS)]
        prediction = truth if (i * 7) % 10 < 5 else WORDS[(i * 3 + 1) % len(WORDS)]
        items.append((f"[{tag} {i}] What does the image show?", truth, prediction))
    return items


def truth_of(items: list[tuple[str, str, str]]) -> list[float]:
    from visionr3.testing.openai_server import rule_verdict

    return [float(rule_verdict(truth, prediction)) for _, truth, prediction in items]


# -- the server process ------------------------------------------------------------------------------------------------


class ServerProcess:
    """``python -m visionr3.testing.openai_server`` in its own process, with its stats/reset endpoints."""

    def __init__(self, args: argparse.Namespace, fault_rate: float) -> None:
        mix = ",".join(f"{kind}={weight}" for kind, weight in FAULT_MIX.items())
        cmd = [
            sys.executable, "-m", "visionr3.testing.openai_server", "--port", "0",
            "--latency", str(args.latency), "--jitter", str(args.jitter), "--fault-rate", str(fault_rate),
            "--fault-mix", mix,
            "--retry-after", str(args.retry_after), "--hang", "30", "--seed", str(args.seed), "--model", MODEL,
        ]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline().strip()
        if not line.startswith("serving "):
            self.proc.kill()
            raise RuntimeError(f"the stub server did not start: {line!r}")
        self.base_url = line.split(" ", 1)[1]
        self.root = self.base_url.rsplit("/v1", 1)[0]

    def _call(self, path: str, method: str = "GET") -> dict:
        request = urllib.request.Request(self.root + path, method=method, data=b"" if method == "POST" else None)
        with urllib.request.urlopen(request, timeout=10) as resp:
            return json.loads(resp.read())

    def stats(self) -> dict:
        return self._call("/stub/stats")

    def reset(self) -> dict:
        return self._call("/stub/reset", "POST")

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


class Measure:
    """Wall time, this process's CPU time and the server's CPU and request count over one row."""

    def __init__(self, server: ServerProcess) -> None:
        self.server = server

    def __enter__(self) -> Measure:
        self.before = self.server.reset()
        self.cpu0, self.t0 = time.process_time(), time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall, self.cpu = time.perf_counter() - self.t0, time.process_time() - self.cpu0
        after = self.server.stats()
        self.server_cpu = after["cpu_s"] - self.before["cpu_s"]
        self.server_requests = after["requests"]


# -- rows --------------------------------------------------------------------------------------------------------------


def run_judge_client(server: ServerProcess, args: argparse.Namespace, http: str, name: str) -> Row:
    """``JudgeClient`` with the benchmark's timeout/retries/concurrency; everything else its defaults."""
    from visionr3.reward.judge.client import JudgeClient
    from visionr3.reward.judge.config import JudgeConfig

    config = JudgeConfig(
        base_url=server.base_url, model=MODEL, api_key_env=None, prompt="visionthink",
        max_concurrency=args.concurrency, timeout=args.timeout, max_retries=args.max_retries, http=http,
    )
    items = workload(args.n, "bench")  # the same contents in every row: the same fault draws
    truth = truth_of(items)

    async def main() -> Row:
        client = JudgeClient(config)
        await client.judge_many(workload(args.warmup, f"warmup-{http}"))  # imports, connections
        errors_before = dict(client.stats.errors)
        done: list[float] = []

        async def judge(item: tuple[str, str, str]):
            verdict = await client.judge(*item)
            done.append(time.perf_counter())
            return verdict

        with Measure(server) as m:
            verdicts = await asyncio.gather(*(judge(item) for item in items))  # = client.judge_many(items), timed
        await client.aclose()
        errors = {k: v - errors_before.get(k, 0) for k, v in client.stats.errors.items()}
        return Row(
            name=name, n=len(items), wall=m.wall, latencies=[v.elapsed for v in verdicts],
            lost=sum(v.score is None for v in verdicts),
            wrong=sum(v.score is not None and v.score != t for v, t in zip(verdicts, truth)),
            client_cpu=m.cpu, server_cpu=m.server_cpu, server_requests=m.server_requests,
            errors={k: v for k, v in errors.items() if v}, tail=tail_seconds(done, m.t0, m.wall),
        )

    return asyncio.run(main())


def run_bare_aiohttp(server: ServerProcess, args: argparse.Namespace) -> Row:
    """The floor: one aiohttp session posting the same prompts, no retries, no verdict parsing beyond JSON."""
    import aiohttp

    from visionr3.reward.judge.prompts import PROMPTS

    prompt = PROMPTS["visionthink"]
    url = server.base_url + "/chat/completions"

    async def main() -> Row:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=args.concurrency)) as session:
            slots = asyncio.Semaphore(args.concurrency)

            done: list[float] = []

            async def one(item: tuple[str, str, str]) -> tuple[bool, float]:
                body = {"model": MODEL, "messages": prompt.messages(*item), "temperature": 0.0, "max_tokens": 512}
                async with slots:
                    start = time.perf_counter()
                    try:
                        async with session.post(url, json=body, timeout=aiohttp.ClientTimeout(total=args.timeout)) as r:
                            data = await r.json()
                        ok = isinstance(data["choices"][0]["message"]["content"], str)
                    except Exception:  # noqa: BLE001 - counted as lost
                        ok = False
                    done.append(time.perf_counter())
                    return ok, done[-1] - start

            await asyncio.gather(*(one(item) for item in workload(args.warmup, "warmup-bare")))
            done.clear()
            items = workload(args.n, "bench")
            with Measure(server) as m:
                results = await asyncio.gather(*(one(item) for item in items))
        return Row(
            name="bare aiohttp loop, no faults (floor)", n=len(items), wall=m.wall,
            latencies=[elapsed for _, elapsed in results], lost=sum(not ok for ok, _ in results), wrong=0,
            client_cpu=m.cpu, server_cpu=m.server_cpu, server_requests=m.server_requests,
            tail=tail_seconds(done, m.t0, m.wall),
        )

    return asyncio.run(main())


def run_bare_retry_loop(server: ServerProcess, args: argparse.Namespace) -> Row:
    """The reference under faults: the least code that keeps JudgeClient's contract, against the same faulty server.

    The same policy as ``JudgeClient``: ``concurrency`` slots (an ``asyncio.Semaphore``), the same per-attempt
    timeout, ``max_retries``, full-jitter backoff from ``backoff_base`` (``Retry-After`` honoured, capped), sleeping
    outside the slot, the same request body and verdict parser, so it loses nothing either. What it leaves out is what
    the client adds on top: the verdict cache and in-flight table, retries admitted first, statistics, error kinds,
    ``Verdict`` objects, one task per judgement. The ratio of the two (``vs_bare_loop``) is the client's own cost.
    """
    import aiohttp

    from visionr3.reward.judge.client import retry_after_seconds
    from visionr3.reward.judge.config import JudgeConfig
    from visionr3.reward.judge.prompts import PROMPTS

    prompt = PROMPTS["visionthink"]
    url = server.base_url + "/chat/completions"
    defaults = JudgeConfig(base_url=server.base_url, model=MODEL)
    headers = {"Authorization": "Bearer EMPTY", "Content-Type": "application/json"}
    rng = random.Random(args.seed)

    async def main() -> Row:
        connector = aiohttp.TCPConnector(limit=args.concurrency, limit_per_host=args.concurrency)
        timeout = aiohttp.ClientTimeout(total=args.timeout)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            slots = asyncio.Semaphore(args.concurrency)
            done: list[float] = []

            async def one(item: tuple[str, str, str]) -> tuple[float | None, float]:
                body = json.dumps({
                    "model": MODEL, "temperature": defaults.temperature, "max_tokens": defaults.max_tokens,
                    "messages": prompt.messages(*item),
                })
                start = None
                for attempt in range(1, args.max_retries + 2):
                    retry_after = None
                    async with slots:
                        start = time.perf_counter() if start is None else start
                        try:
                            async with session.post(url, data=body, headers=headers) as response:
                                status, payload = response.status, await response.read()
                                if status == 429 or status >= 500:
                                    retry_after = retry_after_seconds(response.headers)
                            if status == 200:
                                score = prompt.parse(json.loads(payload)["choices"][0]["message"]["content"])
                                if score is not None:
                                    done.append(time.perf_counter())
                                    return score, done[-1] - start
                            elif status < 500 and status not in (408, 409, 429):
                                break
                        except Exception:  # noqa: BLE001 - timeouts, connection errors, malformed bodies: retry
                            pass
                    if attempt <= args.max_retries:
                        cap = min(defaults.backoff_max, defaults.backoff_base * 2 ** (attempt - 1))
                        delay = retry_after if retry_after is not None else rng.uniform(0.0, cap)
                        await asyncio.sleep(min(defaults.backoff_max, delay))
                done.append(time.perf_counter())
                return None, done[-1] - start

            await asyncio.gather(*(one(item) for item in workload(args.warmup, "warmup-bare-retry")))
            done.clear()
            items = workload(args.n, "bench")
            truth = truth_of(items)
            with Measure(server) as m:
                results = await asyncio.gather(*(one(item) for item in items))
        return Row(
            name="bare aiohttp loop + retries (reference)", n=len(items), wall=m.wall,
            latencies=[elapsed for _, elapsed in results], lost=sum(score is None for score, _ in results),
            wrong=sum(score is not None and score != t for (score, _), t in zip(results, truth)),
            client_cpu=m.cpu, server_cpu=m.server_cpu, server_requests=m.server_requests,
            tail=tail_seconds(done, m.t0, m.wall),
        )

    return asyncio.run(main())


def run_threadpool(server: ServerProcess, args: argparse.Namespace) -> Row:
    """VisionThink's shape (sync client, thread pool) with our retry policy and parser, so it loses nothing."""
    import openai

    from visionr3.reward.judge.client import retry_after_seconds
    from visionr3.reward.judge.prompts import PROMPTS

    prompt = PROMPTS["visionthink"]
    client = openai.OpenAI(base_url=server.base_url, api_key="EMPTY", timeout=args.timeout, max_retries=0)
    done: list[float] = []

    def judge(item: tuple[str, str, str]) -> tuple[float | None, float]:
        messages = prompt.messages(*item)
        start = time.perf_counter()
        for attempt in range(1, args.max_retries + 2):
            retry_after = None
            try:
                reply = client.chat.completions.create(model=MODEL, messages=messages, temperature=0.0, max_tokens=512)
                content = reply.choices[0].message.content if reply.choices else None
                score = prompt.parse(content) if isinstance(content, str) else None
                if score is not None:
                    done.append(time.perf_counter())
                    return score, done[-1] - start
            except openai.APIStatusError as exc:
                if 400 <= exc.status_code < 500 and exc.status_code not in (408, 409, 429):
                    break
                retry_after = retry_after_seconds(exc.response.headers)
            except Exception:  # noqa: BLE001 - timeouts, connection errors, unreadable bodies: retry
                pass
            if attempt <= args.max_retries:
                delay = retry_after if retry_after is not None else random.uniform(0, 0.05 * 2 ** (attempt - 1))
                time.sleep(min(10.0, delay))
        done.append(time.perf_counter())
        return None, done[-1] - start

    with ThreadPoolExecutor(max_workers=args.concurrency) as pool:
        list(pool.map(judge, workload(args.warmup, "warmup-pool")))
        done.clear()
        items = workload(args.n, "bench")
        truth = truth_of(items)
        with Measure(server) as m:
            results = list(pool.map(judge, items))
    client.close()
    return Row(
        name=f"ThreadPool({args.concurrency}) + sync OpenAI", n=len(items), wall=m.wall,
        latencies=[elapsed for _, elapsed in results], lost=sum(score is None for score, _ in results),
        wrong=sum(score is not None and score != t for (score, _), t in zip(results, truth)),
        client_cpu=m.cpu, server_cpu=m.server_cpu, server_requests=m.server_requests,
        tail=tail_seconds(done, m.t0, m.wall),
    )


def run_rule_grade(n: int) -> tuple[float, int] | str:
    """(gradings/s, n) of the rule grader, or why it was skipped."""
    try:
        from visionr3.reward.grade import grade
    except Exception as exc:  # noqa: BLE001 - another module, possibly mid-edit: skip the row, say why
        return f"skipped ({type(exc).__name__}: {exc})"
    items = workload(n, "rule")
    try:
        grade(items[0][2], items[0][1])
        t0 = time.perf_counter()
        for _, truth, prediction in items:
            grade(prediction, truth)
        return n / (time.perf_counter() - t0), n
    except Exception as exc:  # noqa: BLE001
        return f"skipped ({type(exc).__name__}: {exc})"


# -- report ------------------------------------------------------------------------------------------------------------


def fault_ceiling(args: argparse.Namespace, backoff_holds_slot: bool) -> float:
    """Throughput / ideal for a client with zero CPU cost, given the fault mix (a first-order estimate).

    Per attempt a slot is held ``latency`` (a reply or a malformed reply), ``timeout`` (a hung request) or ~0 (429,
    500); a faulted attempt needs another, so a judgement takes 1/(1-p) attempts on average. A client whose backoff
    sleeps hold the slot (a thread in a pool) also pays the ``Retry-After`` of a 429 and the mean jittered backoff of
    a 500.
    """
    total = sum(FAULT_MIX.values())
    share = {kind: args.fault_rate * weight / total for kind, weight in FAULT_MIX.items()}
    per_attempt = (1 - args.fault_rate + share["malformed"]) * args.latency + share["timeout"] * args.timeout
    if backoff_holds_slot:
        per_attempt += share["rate_limit"] * args.retry_after + share["server_error"] * 0.025
    return args.latency / (per_attempt / (1 - args.fault_rate))


def print_report(rows: list[Row], rule: tuple[float, int] | str, args: argparse.Namespace) -> None:
    ideal = args.concurrency / args.latency
    total = sum(FAULT_MIX.values())
    mix = ", ".join(f"{kind} {args.fault_rate * w / total:.2%}" for kind, w in FAULT_MIX.items())
    print()
    print(
        f"== judge throughput: {args.n} judgements/row, concurrency {args.concurrency}, server latency "
        f"{args.latency * 1e3:.0f} ms{f' (±{args.jitter:.0%})' if args.jitter else ''} in its own process, "
        f"ideal {ideal:.0f}/s =="
    )
    print(
        f"   faults {args.fault_rate:.0%} ({mix}); client timeout {args.timeout * 1e3:.0f} ms; 429 Retry-After "
        f"{args.retry_after * 1e3:.0f} ms; max_retries {args.max_retries}"
    )
    print(
        f"   fault ceiling (zero client CPU): {fault_ceiling(args, False):.3f} of ideal when backoff frees the slot "
        f"(async), {fault_ceiling(args, True):.3f} when it holds it (thread pool)"
    )
    print(f"   machine: {os.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.1f} (1 min) at the end")
    header = (
        f"{'client':<38}{'judg/s':>7}{'of ideal':>9}{'p50 ms':>8}{'p95 ms':>8}{'last1% ms':>10}{'lost':>5}{'wrong':>6}"
        f"{'attempts':>9}{'cli CPU/j':>10}{'srv CPU/req':>12}"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        server_cpu = f"{row.server_cpu / row.server_requests * 1e3:.2f}ms" if row.server_requests else "-"
        print(
            f"{row.name:<38}{row.throughput:>7.0f}{row.throughput / ideal:>9.3f}"
            f"{percentile(row.latencies, 0.5) * 1e3:>8.1f}{percentile(row.latencies, 0.95) * 1e3:>8.1f}"
            f"{row.tail * 1e3:>10.0f}{row.lost:>5}{row.wrong:>6}{row.server_requests:>9}"
            f"{row.client_cpu / row.n * 1e3:>8.2f}ms{server_cpu:>12}"
        )
    if isinstance(rule, str):
        print(f"{'rule grade(), 1 thread':<38} {rule}")
    else:
        rate, n = rule
        print(f"{'rule grade(), 1 thread':<38}{rate:>7.0f}   ({n} gradings, no I/O; for scale)")
    print(
        "   attempts = HTTP requests the server received (retries included); last1% = time the batch's slowest 1% of\n"
        "   judgements added at its end (a late timeout + retry), part of the wall time that a longer batch amortises"
    )
    for row in rows:
        if row.errors:
            print(f"   {row.name}: failed attempts by kind {dict(sorted(row.errors.items()))}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=4000, help="judgements per row")
    parser.add_argument("--warmup", type=int, default=256)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--latency", type=float, default=0.05, help="server seconds per reply")
    parser.add_argument(
        "--jitter", type=float, default=0.0,
        help="server latency varies by ±jitter·latency (same mean); 0 = fixed, as specified. A diagnostic: with a fixed "
        "latency all in-flight requests move in lockstep and queue behind each other's CPU on both sides",
    )
    parser.add_argument("--fault-rate", type=float, default=0.05)
    parser.add_argument("--timeout", type=float, default=0.2, help="client timeout per attempt (s)")
    parser.add_argument("--retry-after", type=float, default=0.1, help="the server's 429 Retry-After (s)")
    parser.add_argument("--max-retries", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rule-n", type=int, default=20000)
    parser.add_argument("--repeats", type=int, default=3, help="runs of the headline pair (bare loop, JudgeClient)")
    parser.add_argument("--skip-threadpool", action="store_true")
    parser.add_argument("--skip-calibration", action="store_true", help="skip the two fault-free rows")
    args = parser.parse_args()

    def progress(what: str) -> None:
        print(f"[bench_judge] {what} ...", file=sys.stderr, flush=True)

    rows: list[Row] = []
    if not args.skip_calibration:
        clean = ServerProcess(args, fault_rate=0.0)
        try:
            progress("calibration: bare aiohttp loop, fault-free server")  # what the machine allows right now
            rows.append(run_bare_aiohttp(clean, args))
            progress("calibration: JudgeClient (default config), fault-free server")
            rows.append(run_judge_client(clean, args, "auto", "JudgeClient default, no faults"))
        finally:
            clean.close()
    server = ServerProcess(args, fault_rate=args.fault_rate)
    try:
        from visionr3.reward.judge.config import JudgeConfig, resolve_http

        default_http = resolve_http(JudgeConfig(base_url=server.base_url, model=MODEL))
        # The headline pair, interleaved so that a busy moment of a shared machine hits both alike; the median
        # run of each is reported (and every run's throughput under the table).
        bare_runs, our_runs = [], []
        for repeat in range(1, args.repeats + 1):
            progress(f"reference: bare aiohttp loop + retries, same faults ({repeat}/{args.repeats})")
            bare_runs.append(run_bare_retry_loop(server, args))
            progress(f"JudgeClient, default config (http=auto -> {default_http}) ({repeat}/{args.repeats})")
            our_runs.append(run_judge_client(server, args, "auto", f"JudgeClient default (auto->{default_http})"))
        bare, ours = median_run(bare_runs), median_run(our_runs)
        rows += [bare, ours]
        other = "openai" if default_http == "aiohttp" else "aiohttp"
        progress(f"JudgeClient http={other}")
        rows.append(run_judge_client(server, args, other, f"JudgeClient http={other}"))
        pool = None
        if not args.skip_threadpool:
            progress(f"baseline: ThreadPool({args.concurrency}) + sync openai.OpenAI")
            pool = run_threadpool(server, args)
            rows.append(pool)
    finally:
        server.close()
    progress("rule grader")
    rule = run_rule_grade(args.rule_n)
    print_report(rows, rule, args)
    ideal = args.concurrency / args.latency
    for name, runs in (("bare loop + retries", bare_runs), ("JudgeClient default", our_runs)):
        print(f"   {name}, each run: " + ", ".join(f"{run.throughput / ideal:.3f}" for run in runs) + " of ideal")
    print(f"   JudgeClient default / bare loop under the same faults: {ours.throughput / bare.throughput:.3f} "
          f"(ceiling {fault_ceiling(args, False):.3f}, bare {bare.throughput / ideal:.3f}, ours "
          f"{ours.throughput / ideal:.3f} of ideal)")

    speedup = ours.throughput / pool.throughput if pool else float("nan")
    lost = sum(run.lost for run in our_runs)
    print(
        f"efficiency={ours.throughput / ideal:.3f} speedup_vs_threadpool={speedup:.2f} lost={lost} "
        f"vs_bare_loop={ours.throughput / bare.throughput:.3f}"
    )


def median_run(runs: list[Row]) -> Row:
    return sorted(runs, key=lambda run: run.throughput)[(len(runs) - 1) // 2]


if __name__ == "__main__":
    main()
