"""A loopback OpenAI-compatible chat server that judges deterministically and injects faults on purpose.

Why it exists: the judge client (:mod:`visionr3.reward.judge.client`) must survive what real endpoints do under load —
hung requests, 429s with ``Retry-After``, 5xx, and 200 replies whose body is not a chat completion — and must never
let a policy's prediction talk the judge into a verdict. Mocking the SDK would test none of that: the HTTP stack,
the SDK's error mapping and the retry timing are exactly what breaks. This server speaks real HTTP on 127.0.0.1
(aiohttp), so tests and ``benchmarks/bench_judge.py`` drive the real ``openai`` SDK end to end, offline.

What it serves:

* ``POST /v1/chat/completions`` (and Azure's ``/openai/deployments/{deployment}/chat/completions``) — an OpenAI
  chat completion (``id``, ``object``, ``created``, ``model``, ``choices[0].message.content``, ``finish_reason``,
  ``usage``) after ``latency`` seconds (± ``jitter``·latency, uniform, if set). The content comes from a
  pluggable :data:`ReplyFn`; the default, :func:`rule_judge`, recognises the judge prompt presets of
  :mod:`visionr3.reward.judge.prompts` by their own text (it keeps its own copy of their markers, so a template the client
  renders wrongly is not "recognised" by construction), pulls ground truth and prediction out of the prompt, decides
  by normalised exact match (:func:`rule_verdict`) and answers in that preset's verdict format. Like a chatty real
  judge it **echoes the prediction before its verdict**, so a prediction that contains ``Score: 1`` or ``[[YES]]``
  really reaches the client's parser. A ``ReplyFn`` that raises gets the request a ``500`` whose error message is
  the exception's (so a scripted model's complaint, e.g. :class:`visionr3.testing.square_policy.PolicyError`, reaches
  the client's error instead of a bare "Internal Server Error").
* ``GET /v1/models`` — the one model it serves.
* ``GET /stub/stats`` — its counters as JSON (requests, faults by kind, replies, this process's CPU seconds), and
  ``POST /stub/reset`` — zero them and forget seen contents; for a server running in another process.

Faults (:class:`FaultRates`, each a probability per request; they are mutually exclusive):

* ``timeout``: the request hangs for ``hang`` seconds (longer than any sane client timeout), then answers normally
  if the client is still there;
* ``rate_limit``: ``429`` at once, with ``Retry-After: <retry_after>`` (seconds; a decimal when not whole);
* ``server_error``: ``500`` at once, with an OpenAI-style error body;
* ``malformed``: ``200`` after ``latency`` with a body that is not a valid chat completion (truncated JSON, no
  ``choices``, an HTML page, ``content: null``, an empty body — one of these, drawn per request).

Reproducibility: whether a request faults, and how, is a hash of ``(seed, request content, how many times this
content was seen before)`` — not of arrival order — so the same workload gets the same faults however its requests
interleave. ``faults_on_first_attempt_only=True`` injects only on the first sight of a content, so every retry
succeeds: the retry path is exercised deterministically and a client with ``max_retries >= 1`` must lose nothing.

A ``fault_plan`` replaces the draws with a script, for a run too small for rates to be sure of anything (a CPU
training step judges a handful of answers): a list of fault-kind sequences, taken in turn by the distinct contents in
the order they first arrive; a content's attempt ``k`` gets its sequence's ``k``-th fault, and an attempt past the
end of it is answered. ``[("timeout", "rate_limit", "server_error"), ("rate_limit",)]`` against a client with
``max_retries=2``: the first, third, ... contents fail every attempt, one fault of each kind; the others are answered
on their second. Which content gets which sequence follows arrival; how many get each does not.

In-process use (the server's event loop runs in a background thread)::

    with OpenAIStubServer(latency=0.05, faults=FaultRates.mix(0.1)) as server:
        client = openai.AsyncOpenAI(base_url=server.base_url, api_key="EMPTY")

Own process (what the benchmark does, so the server's CPU does not compete with the client's event loop)::

    python -m visionr3.testing.openai_server --port 8765 --latency 0.05 --fault-rate 0.05

It prints ``serving <base_url>`` once it accepts connections, and stops on SIGINT/SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import re
import signal
import socket
import threading
import time
import unicodedata
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

FAULT_KINDS: tuple[str, ...] = ("timeout", "rate_limit", "server_error", "malformed")
"""The injectable fault kinds, in the order their probability bands are laid out on [0, 1)."""

ReplyFn = Callable[[list[dict[str, Any]], str], str]
"""``reply(messages, model) -> content``: what the "model" answers to a chat request (OpenAI message dicts)."""

DEFAULT_MODEL = "stub-judge"
UNRECOGNISED_REPLY = "I cannot find a question and two answers to compare."
"""The rule judge's answer to a prompt that is none of the presets: it contains no verdict in any format."""


@dataclass(frozen=True)
class FaultRates:
    """Probability per request of each fault kind (see the module docstring); their sum must be at most 1."""

    timeout: float = 0.0
    rate_limit: float = 0.0
    server_error: float = 0.0
    malformed: float = 0.0

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"fault rate {f.name}={value} is not a probability")
        if self.total > 1.0 + 1e-9:
            raise ValueError(f"fault rates sum to {self.total:.3f} > 1")

    @property
    def total(self) -> float:
        return self.timeout + self.rate_limit + self.server_error + self.malformed

    @classmethod
    def mix(cls, total: float, weights: Mapping[str, float] | None = None) -> FaultRates:
        """``total`` split over the kinds in proportion to ``weights`` (default: equally)."""
        weights = dict.fromkeys(FAULT_KINDS, 1.0) if weights is None else dict(weights)
        unknown = set(weights) - set(FAULT_KINDS)
        if unknown:
            raise ValueError(f"unknown fault kinds {sorted(unknown)}; known: {FAULT_KINDS}")
        norm = sum(weights.values())
        if norm <= 0:
            return cls()
        return cls(**{kind: total * w / norm for kind, w in weights.items()})

    @classmethod
    def coerce(cls, value: FaultRates | Mapping[str, float] | float | None) -> FaultRates:
        """Accept a ``FaultRates``, a ``{kind: rate}`` mapping, a total rate (split equally) or ``None`` (none)."""
        if value is None:
            return cls()
        if isinstance(value, FaultRates):
            return value
        if isinstance(value, Mapping):
            return cls(**dict(value))
        return cls.mix(float(value))

    def pick(self, u: float) -> str | None:
        """The fault kind whose band contains ``u`` ∈ [0, 1), or ``None`` (no fault)."""
        edge = 0.0
        for kind in FAULT_KINDS:
            edge += getattr(self, kind)
            if u < edge:
                return kind
        return None


# --------------------------------------------------------------------------------------------------------------------
# The rule judge: recognise a preset's prompt, extract (ground truth, prediction), decide, answer in its format.
# The markers below are this module's own copy of the preset texts (see visionr3.reward.judge.prompts and
# papers.md). Only the prediction is untrusted: fields *before* it are matched lazily and the
# prediction greedily, so text injected into the prediction (even a copy of the template's own markers) stays inside
# the prediction.
# --------------------------------------------------------------------------------------------------------------------

_VISIONTHINK_SYSTEM = "You are an intelligent chatbot designed for evaluating the correctness of generative outputs"
_VISIONTHINK_USER = re.compile(
    r"\AI will give you a question related to an image and the following text as inputs:\n\n"
    r"1\. \*\*Question Related to the Image\*\*: (?P<question>.*?)\n"
    r"2\. \*\*Ground Truth Answer\*\*: (?P<ground_truth>.*?)\n"
    r"3\. \*\*Model Predicted Answer\*\*: (?P<prediction>.*)\n\n"
    r"Your task is to evaluate the model's predicted answer against the ground truth answer, based on the context "
    r"provided by the question related to the image\. Consider the following criteria for evaluation:\n",
    re.DOTALL,
)
_QWEN3_SYSTEM = "You are an expert in verifying if two answers are the same."
_QWEN3_USER = re.compile(
    r"\A\nProblem: (?P<question>.*?)\n"
    r"Answer 1 \(\*\*Model Predicted Answer\*\*\): (?P<prediction>.*)\n"
    r"Answer 2 \(\*\*Ground Truth Answer\*\*\): (?P<ground_truth>.*?)\n\Z",
    re.DOTALL,
)
_VLM_R3_USER = re.compile(
    r"\AYou are a evaluation expert\. Compare the student's answer with the correct answer\..*?\n {20}"
    r"Question: (?P<question>.*?)\n"
    r"Student's answer: (?P<prediction>.*)\n"
    r"Correct answer: (?P<ground_truth>.*?)\n"
    r"Output only 1\.0 or 0\.0:\Z",
    re.DOTALL,
)
_DEEPEYES_HEADER = "Below are two answers to a question. Question is [Question], [Standard Answer] is the standard"
_DEEPEYES_LAST_SHOT = "[Model_answer] : The towel in the center of the picture is pink.\nJudgement: 0\n"
_DEEPEYES_ITEM = re.compile(
    r"\A\s*\[Question\]: (?P<question>.*?)\n"
    r"\[Standard Answer\]: (?P<ground_truth>.*?)\n"
    r"\[Model_answer\] : (?P<prediction>.*)\n"
    r"Judgement:\Z",
    re.DOTALL,
)
_SR1_USER = re.compile(
    r"\AYou are provided a question, a gold answer, and a candidate answer\..*?\n"
    r"Question:(?P<question>.*?)\n"
    r"Reference Answer: (?P<ground_truth>.*?)\n"
    r"Candidate Answer: (?P<prediction>.*)\Z",
    re.DOTALL,
)

_TRAILING_PUNCT = ".!?,;:'\"`"


def normalise_answer(text: str) -> str:
    """NFKC, case-folded, whitespace collapsed, surrounding quotes and trailing punctuation removed."""
    text = " ".join(unicodedata.normalize("NFKC", text).casefold().split())
    return text.strip(_TRAILING_PUNCT).strip()


def rule_verdict(ground_truth: str, prediction: str) -> bool:
    """The rule judge's decision: normalised exact match. Tests compute the expected verdicts with this."""
    return normalise_answer(prediction) == normalise_answer(ground_truth) != ""


def _content(message: Mapping[str, Any]) -> str:
    """A message's text; OpenAI also allows a list of ``{"type": "text", "text": ...}`` parts."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if isinstance(part, Mapping))
    return ""


def recognise(messages: list[dict[str, Any]]) -> tuple[str, str, str] | None:
    """``(preset, ground_truth, prediction)`` for a prompt of a known preset, else ``None``."""
    system = next((_content(m) for m in messages if m.get("role") == "system"), "")
    user = next((_content(m) for m in reversed(messages) if m.get("role") == "user"), "")
    if system.startswith(_VISIONTHINK_SYSTEM) and (m := _VISIONTHINK_USER.match(user)):
        return "visionthink", m["ground_truth"], m["prediction"]
    if system.startswith(_QWEN3_SYSTEM) and (m := _QWEN3_USER.match(user)):
        return "qwen3", m["ground_truth"], m["prediction"]
    if m := _VLM_R3_USER.match(user):
        return "vlm_r3", m["ground_truth"], m["prediction"]
    if _DEEPEYES_HEADER in user and _DEEPEYES_LAST_SHOT in user:
        # The shots come before any untrusted text, so the item starts after the first copy of the last shot.
        item = user.split(_DEEPEYES_LAST_SHOT, 1)[1]
        if m := _DEEPEYES_ITEM.match(item):
            return "deepeyes", m["ground_truth"], m["prediction"]
    if m := _SR1_USER.match(user):
        return "sr1", m["ground_truth"], m["prediction"]
    return None


def rule_judge(messages: list[dict[str, Any]], model: str) -> str:
    """The default :data:`ReplyFn`: a deterministic judge that answers every preset in its own verdict format.

    The reply echoes the prediction (as a chatty judge does) and ends with the verdict. A Qwen3 judge's reply carries
    a ``<think>`` block first, as Qwen3 with thinking on does.
    """
    found = recognise(messages)
    if found is None:
        return UNRECOGNISED_REPLY
    preset, ground_truth, prediction = found
    ok = rule_verdict(ground_truth, prediction)
    if preset == "visionthink":
        return f'The model answered "{prediction}" and the ground truth is "{ground_truth}". Score: {int(ok)}'
    if preset == "qwen3":
        same = "the same" if ok else "different"
        return (
            f'<think>\nAnswer 1 is "{prediction}". Answer 2 is "{ground_truth}". They are {same}.\n</think>\n\n'
            f"{'[[YES]]' if ok else '[[NO]]'}"
        )
    if preset == "vlm_r3":
        return f'The student\'s answer is "{prediction}".\n{"1.0" if ok else "0.0"}'
    if preset == "deepeyes":
        return f"[Model_answer] : {prediction}\nJudgement: {int(ok)}"
    # sr1
    word = "correct" if ok else "incorrect"
    return f'The candidate answer "{prediction}" is {word}. <judgment>{word}</judgment>'


# --------------------------------------------------------------------------------------------------------------------
# The server.
# --------------------------------------------------------------------------------------------------------------------

_MALFORMED_BODIES: tuple[tuple[str, str], ...] = (
    ('{"id": "chatcmpl-stub", "object": "chat.completion", "choices": [{"index": 0, "message": {"content": "Sco',
     "application/json"),
    ('{"id": "chatcmpl-stub", "object": "chat.completion", "model": "stub-judge"}', "application/json"),
    ("<html><body><h1>502 Bad Gateway</h1></body></html>", "text/html"),
    ('{"id": "chatcmpl-stub", "object": "chat.completion", "created": 0, "model": "stub-judge", "choices": '
     '[{"index": 0, "message": {"role": "assistant", "content": null}, "finish_reason": "stop"}]}',
     "application/json"),
    ("", "application/json"),
)
"""Bodies a ``malformed`` fault answers with (status 200): none of them carries a judge's reply."""


def _unit(seed: int, salt: str, digest: bytes) -> float:
    """A reproducible draw in [0, 1) from (seed, salt, request content)."""
    h = hashlib.blake2b(f"{seed}:{salt}:".encode() + digest, digest_size=8).digest()
    return int.from_bytes(h, "big") / 2.0**64


def _format_seconds(seconds: float) -> str:
    return str(int(seconds)) if float(seconds).is_integer() else f"{seconds:g}"


class OpenAIStubServer:
    """A loopback OpenAI-compatible chat server with seeded fault injection (see the module docstring).

    Args:
        latency: seconds each normal (and malformed) reply takes.
        jitter: the latency varies uniformly within ±jitter·latency (a reproducible draw per request); 0 = fixed.
        faults: :class:`FaultRates`, a ``{kind: rate}`` mapping, or a total rate split equally over the kinds.
        seed: seeds the fault draws.
        faults_on_first_attempt_only: inject only on the first request with a given content.
        fault_plan: fault kinds per attempt, for successive distinct contents in turn (the module docstring); when
            given, ``faults`` is not drawn.
        reply: :data:`ReplyFn` producing the content; default :func:`rule_judge`.
        hang: seconds a ``timeout`` fault holds the request before answering.
        retry_after: seconds sent in a ``429``'s ``Retry-After`` header.
        model: the model id ``/v1/models`` lists (requests may name any model; the reply echoes theirs).
        host, port: where to listen; port 0 picks a free port.

    Counters (read them from any thread; they are plain ints updated on the server's loop): :attr:`requests`,
    :attr:`faults` (a ``Counter`` by kind), :attr:`replies` (normal replies sent), :attr:`bad_requests`, and
    :attr:`last_authorization` (the last request's ``Authorization``/``api-key`` header, so tests can see that a
    key was sent).
    """

    def __init__(
        self,
        *,
        latency: float = 0.0,
        jitter: float = 0.0,
        faults: FaultRates | Mapping[str, float] | float | None = None,
        seed: int = 0,
        faults_on_first_attempt_only: bool = False,
        fault_plan: Sequence[Sequence[str]] | None = None,
        reply: ReplyFn | None = None,
        hang: float = 30.0,
        retry_after: float = 0.1,
        model: str = DEFAULT_MODEL,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.latency = float(latency)
        self.jitter = float(jitter)
        self.faults_config = FaultRates.coerce(faults)
        self.seed = int(seed)
        self.faults_on_first_attempt_only = bool(faults_on_first_attempt_only)
        self.fault_plan = tuple(tuple(kinds) for kinds in fault_plan or ())
        unknown = {kind for kinds in self.fault_plan for kind in kinds} - set(FAULT_KINDS)
        if unknown:
            raise ValueError(f"unknown fault kinds {sorted(unknown)} in fault_plan; known: {FAULT_KINDS}")
        self.reply = reply or rule_judge
        self.hang = float(hang)
        self.retry_after = float(retry_after)
        self.model = model
        self.host = host
        self._requested_port = int(port)
        self.port: int | None = None
        self.requests = 0
        self.replies = 0
        self.bad_requests = 0
        self.last_authorization: str | None = None
        self.faults: Counter[str] = Counter()
        self._seen: dict[bytes, int] = {}  # content -> attempts so far
        self._rank: dict[bytes, int] = {}  # content -> its place in arrival order (fault_plan)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: Any = None
        self._closing: asyncio.Event | None = None
        self._started = time.monotonic()

    # -- addresses and counters ---------------------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>/v1`` — what ``openai.AsyncOpenAI(base_url=...)`` takes."""
        if self.port is None:
            raise RuntimeError("OpenAIStubServer is not running")
        return f"http://{self.host}:{self.port}/v1"

    def stats(self) -> dict[str, Any]:
        """A snapshot of the counters (also served at ``GET /stub/stats``)."""
        return {
            "requests": self.requests,
            "replies": self.replies,
            "bad_requests": self.bad_requests,
            "faults": {kind: self.faults.get(kind, 0) for kind in FAULT_KINDS},
            "distinct_contents": len(self._seen),
            "cpu_s": time.process_time(),
            "uptime_s": time.monotonic() - self._started,
        }

    def reset_counters(self) -> None:
        """Zero the counters and forget which contents were seen (so first attempts fault again)."""
        self.requests = self.replies = self.bad_requests = 0
        self.faults.clear()
        self._seen.clear()
        self._rank.clear()

    # -- the HTTP application ------------------------------------------------------------------------------------------

    def _app(self) -> Any:
        from aiohttp import web

        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", self._chat)
        # Azure OpenAI's route (``AsyncAzureOpenAI``): the deployment names the model.
        app.router.add_post("/openai/deployments/{deployment}/chat/completions", self._chat)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/stub/stats", self._stats)
        app.router.add_post("/stub/reset", self._reset)
        return app

    async def _models(self, request: Any) -> Any:
        from aiohttp import web

        model = {"id": self.model, "object": "model", "created": 0, "owned_by": "visionr3-stub"}
        return web.json_response({"object": "list", "data": [model]})

    async def _stats(self, request: Any) -> Any:
        from aiohttp import web

        return web.json_response(self.stats())

    async def _reset(self, request: Any) -> Any:
        from aiohttp import web

        self.reset_counters()
        return web.json_response(self.stats())

    @staticmethod
    def _error(status: int, message: str, kind: str, headers: Mapping[str, str] | None = None) -> Any:
        from aiohttp import web

        body = {"error": {"message": message, "type": kind, "param": None, "code": None}}
        return web.json_response(body, status=status, headers=headers)

    async def _chat(self, request: Any) -> Any:
        from aiohttp import web

        self.requests += 1
        self.last_authorization = request.headers.get("Authorization") or request.headers.get("api-key")
        raw = await request.read()
        try:
            body = json.loads(raw)
            messages = body["messages"]
            model = str(body.get("model") or request.match_info.get("deployment") or self.model)
            if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
                raise TypeError("messages must be a list of objects")
        except (ValueError, KeyError, TypeError) as exc:
            self.bad_requests += 1
            return self._error(400, f"invalid request: {exc}", "invalid_request_error")

        # The request's identity for "first attempt" is its content, not per-attempt fields such as temperature.
        digest = hashlib.blake2b(
            json.dumps([model, messages], sort_keys=True, ensure_ascii=False).encode(), digest_size=16
        ).digest()
        seen = self._seen.get(digest, 0)
        self._seen[digest] = seen + 1
        kind = None
        if self.fault_plan:
            kinds = self.fault_plan[self._rank.setdefault(digest, len(self._rank)) % len(self.fault_plan)]
            kind = kinds[seen] if seen < len(kinds) else None
        elif not (self.faults_on_first_attempt_only and seen > 0) and self.faults_config.total > 0:
            kind = self.faults_config.pick(_unit(self.seed, f"fault:{seen}", digest))
        if kind is not None:
            self.faults[kind] += 1

        if kind == "rate_limit":
            return self._error(
                429, "Rate limit reached (injected).", "rate_limit_exceeded",
                headers={"Retry-After": _format_seconds(self.retry_after)},
            )
        if kind == "server_error":
            return self._error(500, "The server had an error (injected).", "server_error")
        if kind == "timeout":
            assert self._closing is not None
            try:
                await asyncio.wait_for(self._closing.wait(), self.hang)
                return self._error(503, "Server shutting down.", "server_error")
            except asyncio.TimeoutError:
                pass  # then answer normally, as a slow real server eventually does
        if self.latency > 0:
            spread = self.jitter * (2.0 * _unit(self.seed, f"jitter:{seen}", digest) - 1.0) if self.jitter else 0.0
            await asyncio.sleep(self.latency * (1.0 + spread))
        if kind == "malformed":
            variant = int(_unit(self.seed, f"malformed:{seen}", digest) * len(_MALFORMED_BODIES))
            text, content_type = _MALFORMED_BODIES[variant]
            return web.Response(status=200, text=text, content_type=content_type)

        try:
            content = self.reply(messages, model)
        except Exception as exc:  # noqa: BLE001 - a scripted model's complaint, passed on to the client
            return self._error(500, f"the reply function failed: {type(exc).__name__}: {exc}", "server_error")
        self.replies += 1
        completion_tokens = len(content.split())
        prompt_tokens = sum(len(_content(m).split()) for m in messages)
        return web.json_response(
            {
                "id": f"chatcmpl-stub-{self.requests}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": content},
                        "finish_reason": "stop",
                        "logprobs": None,
                    }
                ],
                "usage": {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": completion_tokens,
                    "total_tokens": prompt_tokens + completion_tokens,
                },
            }
        )

    # -- lifecycle -----------------------------------------------------------------------------------------------------

    async def serve(self) -> None:
        """Start listening on the current event loop (returns once connections are accepted)."""
        from aiohttp import web

        self._closing = asyncio.Event()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self._requested_port))
        # A client disconnect (e.g. its timeout) cancels the handler, as on a real server; access logs are noise here.
        self._runner = web.AppRunner(self._app(), handler_cancellation=True, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        await web.SockSite(self._runner, sock, backlog=1024).start()
        self.port = sock.getsockname()[1]

    async def aclose(self) -> None:
        """Stop listening; hung ``timeout`` handlers are released at once."""
        if self._closing is not None:
            self._closing.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def start(self) -> OpenAIStubServer:
        """Run the server's event loop in a daemon thread; returns once it accepts connections."""
        if self._thread is not None:
            raise RuntimeError("OpenAIStubServer already started")
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self.serve())
            except BaseException as exc:  # noqa: BLE001 - handed to the starting thread
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self.aclose())
            loop.close()

        self._thread = threading.Thread(target=run, name="openai-stub-server", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            self._thread = None
            raise failure[0]
        return self

    def stop(self) -> None:
        """Stop the background server started by :meth:`start` (idempotent)."""
        if self._thread is None or self._loop is None:
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._thread = None

    def __enter__(self) -> OpenAIStubServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _parse_mix(text: str) -> dict[str, float]:
    """``"timeout=1,rate_limit=2"`` → weights."""
    weights = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        kind, _, weight = part.partition("=")
        weights[kind.strip()] = float(weight)
    return weights


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m visionr3.testing.openai_server", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (printed on startup)")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds per reply")
    parser.add_argument("--jitter", type=float, default=0.0, help="latency varies uniformly by ±jitter·latency")
    parser.add_argument("--fault-rate", type=float, default=0.0, help="total fault probability per request")
    parser.add_argument(
        "--fault-mix", default="", help="relative weights, e.g. timeout=1,rate_limit=1,server_error=1,malformed=1"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--first-attempt-only", action="store_true", help="inject faults only on first attempts")
    parser.add_argument("--hang", type=float, default=30.0, help="seconds a timeout fault hangs")
    parser.add_argument("--retry-after", type=float, default=0.1, help="Retry-After seconds of a 429")
    parser.add_argument("--model", default=DEFAULT_MODEL)
    args = parser.parse_args(argv)

    faults = FaultRates.mix(args.fault_rate, _parse_mix(args.fault_mix) or None)
    server = OpenAIStubServer(
        latency=args.latency, jitter=args.jitter, faults=faults, seed=args.seed,
        faults_on_first_attempt_only=args.first_attempt_only, hang=args.hang, retry_after=args.retry_after,
        model=args.model, host=args.host, port=args.port,
    )

    async def run() -> None:
        await server.serve()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        print(f"serving {server.base_url}", flush=True)
        await stop.wait()
        await server.aclose()
        s = server.stats()
        print(f"stopped: {s['requests']} requests, {s['replies']} replies, faults {s['faults']}", flush=True)

    asyncio.run(run())


if __name__ == "__main__":
    main()
