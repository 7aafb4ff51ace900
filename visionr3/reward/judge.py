"""LLM-as-a-judge over any OpenAI-compatible endpoint: exact prompt presets, strict verdict parsing, bounded retries.

One client serves a remote API (GPT-4o, Azure, DashScope) and a local judge (vLLM/HF behind verl's reward router):
both speak ``POST {base_url}/chat/completions``. What it must get right, each a bug in the papers' code
(papers.md §1.5, §1.7, §2.5, §3.4, §4.5):

* **Only the judge's final verdict counts.** Each preset's parser takes the *last* verdict in its own format
  (VisionThink's last ``Score: 0|1``, Qwen3's last ``[[YES]]``/``[[NO]]`` after the last ``</think>``, ...), never
  ``'1' in reply``. A chatty judge that quotes the prediction — and the prediction contains ``Score: 1`` — therefore
  cannot flip a verdict, and a reply without a verdict is a *failed attempt* (retried), never a silent 0 or 1.
* **Failures are bounded and visible.** Each attempt consumes one retry — VisionThink's client retried
  ``RateLimitError`` without counting and could loop forever. Retries back off exponentially with full jitter and
  honour ``Retry-After``/``retry-after-ms`` (capped). After ``max_retries`` the verdict is ``score=None`` with an
  error kind; the reward code filters that sample (VisionThink's ``is_filter``) instead of crashing or hanging.
* **Deterministic by default** (temperature 0), where DeepEyes sampled its judge at T0.3 with random seeds.
* **The API key stays out of everything**: it is read from the environment variable ``api_key_env`` when the client is
  built, never stored in the config, and redacted from error texts.

Throughput: one :class:`JudgeClient` per process and event loop (:func:`judge_client`) shares its request slots
(``max_concurrency`` requests in flight; waiting retries go first), an LRU cache of verdicts (failures are not
cached) and in-flight de-duplication (identical concurrent requests make one call). Two HTTP paths, with the same
retries and parsing; ``http: auto`` (the default) takes the SDK for ``https://`` endpoints and Azure — remote APIs,
where a reply takes seconds and TLS, proxies and auth are best left to the SDK — and aiohttp for ``http://``
endpoints: a judge on this machine or inside the cluster (a vLLM server, verl's reward router), where replies take
tens of milliseconds and the client's CPU per request decides the throughput:

* ``http: openai`` — the ``openai`` SDK's ``AsyncOpenAI`` (``AsyncAzureOpenAI`` with
  ``azure_api_version``), built lazily with the SDK's retries off, on the SDK's aiohttp transport when installed
  (httpx costs ~1.5x its CPU). We call it through ``client.post("/chat/completions", ...)``, the SDK's documented
  route for raw requests, rather than ``chat.completions.create``: ``create`` re-walks the message TypedDicts and
  builds pydantic models on every call — 1.3 ms of CPU per request against 0.8 ms in our profile — and for
  plain-text judge prompts both do nothing. Auth, Azure's deployment URLs, proxies and error mapping stay the SDK's.
* ``http: aiohttp`` — one ``aiohttp.ClientSession`` posting the same JSON: ~0.25 ms of CPU per request, a third of
  the SDK path's (1.1 ms on a busy machine). Against a 50 ms judge at 64 in flight the SDK path saturates a shared
  core's event loop — spurious timeouts, retries, down to half the throughput (``benchmarks/bench_judge.py``).

Config (the client keys of the ``visionr3.reward.judge`` block; :meth:`JudgeConfig.from_dict` takes them)::

    judge:
      base_url: https://api.openai.com/v1   # or empty + verl's reward_router_address for a local judge
      model: gpt-4o-2024-11-20
      api_key_env: OPENAI_API_KEY            # null: no key (a judge that needs none)
      prompt: visionthink                    # visionthink | qwen3 | vlm_r3 | deepeyes | sr1
      extra_body: {chat_template_kwargs: {enable_thinking: true}}   # e.g. a Qwen3 judge on vLLM

Use from an async reward function::

    client = judge_client(config)            # one per process and event loop
    verdict = await client.judge(question, ground_truth, prediction)
    if verdict.score is None: ...            # failed after retries: exclude the sample, do not score it 0
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import json
import logging
import os
import random
import re
import sys
import threading
import time
import weakref
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from email.utils import parsedate_to_datetime
from types import MappingProxyType
from typing import Any, Literal
from urllib.parse import urlsplit

from visionr3.config import plain

logger = logging.getLogger(__name__)

CONFIG_KEY = "visionr3.reward.judge"
"""Where the judge's config block lives; error messages name keys under it."""

VerdictParser = Callable[[str], "float | None"]
"""``parse(reply) -> 1.0 | 0.0 | None``: the judge's final verdict, ``None`` when the reply carries none."""

RAW_LIMIT = 2000
"""Characters of the judge's last reply kept in :attr:`Verdict.raw`."""

PLACEHOLDER_API_KEY = "EMPTY"
"""Sent when no key is needed (loopback, or ``api_key_env: null``); vLLM's convention."""


# ====================================================================================================================
# Verdict parsers. Each returns the LAST verdict in its format, or None. They never look for a bare digit anywhere in
# the reply, so a quoted prediction cannot supply the verdict unless the judge ends its reply with it.
# ====================================================================================================================

# "Score: 1", "score:0.0", "**Score:** 1", "Score: **1**" — not "Score: 1.5", "Score: 10".
_SCORE = re.compile(r"score(?:\*\*)?\s*:\s*(?:\*\*)?\s*([01])(?:\.0+)?(?!\.?\d)", re.IGNORECASE)
_YES_NO = re.compile(r"\[\[\s*(YES|NO)\s*\]\]", re.IGNORECASE)
_FLOAT_01 = re.compile(r"(?<![\d.])([01])\.0+(?!\.?\d)")
_JUDGEMENT = re.compile(r"judg?ement\s*:\s*(?:\*\*)?\s*([01])(?:\.0+)?(?!\.?\d)", re.IGNORECASE)
_JUDGMENT_TAG = re.compile(r"<judgment>(.*?)</judgment>", re.IGNORECASE | re.DOTALL)
_NEGATIVE = re.compile(r"\b(?:incorrect|not correct|wrong)\b", re.IGNORECASE)
_POSITIVE = re.compile(r"\bcorrect\b", re.IGNORECASE)


def _last(pattern: re.Pattern[str], text: str) -> str | None:
    found = pattern.findall(text)
    return found[-1] if found else None


def parse_score(reply: str) -> float | None:
    """VisionThink's GPT judge: the last ``Score: 0|1`` (papers.md §1.3; theirs fell back to 0 when none matched)."""
    value = _last(_SCORE, reply)
    return None if value is None else float(value)


def parse_yes_no(reply: str) -> float | None:
    """Qwen3 verifier: the last ``[[YES]]``/``[[NO]]`` after the last ``</think>``.

    A reply that opened ``<think>`` but never closed it ran out of tokens while thinking: no verdict (VisionThink
    scored that 0). A reply with no think block at all (thinking off, or vLLM's reasoning parser moved it out of
    ``content``) is read whole.
    """
    if "</think>" in reply:
        reply = reply.rsplit("</think>", 1)[1]
    elif "<think>" in reply:
        return None
    value = _last(_YES_NO, reply)
    return None if value is None else float(value.upper() == "YES")


def parse_float_verdict(reply: str) -> float | None:
    """VLM-R3: the last standalone ``1.0``/``0.0``; or a reply that is exactly ``1``/``0``."""
    value = _last(_FLOAT_01, reply)
    if value is not None:
        return float(value)
    bare = reply.strip()
    return float(bare) if bare in ("0", "1") else None


def parse_judgement(reply: str) -> float | None:
    """DeepEyes: the last ``Judgement: 0|1`` (also the prompt's own spelling ``Judement``); or a bare ``1``/``0``.

    Theirs took the text after ``Judgement:`` and asked ``'1' in`` it, else ``'0' in`` it, else scored 0.
    """
    value = _last(_JUDGEMENT, reply)
    if value is not None:
        return float(value)
    bare = reply.strip()
    return float(bare) if bare in ("0", "1") else None


def parse_judgment_tag(reply: str) -> float | None:
    """Vision-SR1: the last ``<judgment>…</judgment>``; ``incorrect``/``not correct``/``wrong`` → 0; ``correct`` → 1.

    Theirs counted anything without "incorrect" as correct — an empty or failed judgment included (§3.4).
    """
    value = _last(_JUDGMENT_TAG, reply)
    if value is None:
        return None
    if _NEGATIVE.search(value):
        return 0.0
    return 1.0 if _POSITIVE.search(value) else None


# ====================================================================================================================
# Prompt presets: the papers' exact texts (papers.md §1.3, §1.5, §2.3, §4.3, §3.3). Templates are str.format()ted
# once, so braces inside the *values* are never re-interpreted.
# ====================================================================================================================


@dataclass(frozen=True)
class JudgePrompt:
    """A judge preset: its messages and its verdict parser.

    ``user`` (and ``system``) are ``str.format`` templates over ``{question}``, ``{ground_truth}``, ``{prediction}``.
    ``empty_prediction`` replaces a blank prediction (Qwen3's "Invalid Answer. Please output [[NO]]." sentinel).
    """

    name: str
    user: str
    parse: VerdictParser = field(repr=False, compare=False)
    system: str | None = None
    empty_prediction: str | None = None

    def messages(self, question: str, ground_truth: str, prediction: str) -> list[dict[str, str]]:
        """The chat messages for one judgement."""
        if self.empty_prediction is not None and not prediction.strip():
            prediction = self.empty_prediction
        values = {"question": question, "ground_truth": ground_truth, "prediction": prediction}
        out = [] if self.system is None else [{"role": "system", "content": self.system.format(**values)}]
        out.append({"role": "user", "content": self.user.format(**values)})
        return out


VISIONTHINK_SYSTEM = (
    "You are an intelligent chatbot designed for evaluating the correctness of generative outputs for question-answer "
    "pairs.\nYour task is to compare the predicted answer with the correct answer and determine if they match "
    "meaningfully. Here's how you can accomplish the task:\n------\n##INSTRUCTIONS:\n- Focus on the meaningful match "
    "between the predicted answer and the correct answer.\n- Consider synonyms or paraphrases as valid matches.\n"
    "- Evaluate the correctness of the prediction compared to the answer."
)
VISIONTHINK_USER = (
    "I will give you a question related to an image and the following text as inputs:\n\n"
    "1. **Question Related to the Image**: {question}\n2. **Ground Truth Answer**: {ground_truth}\n"
    "3. **Model Predicted Answer**: {prediction}\n\n"
    "Your task is to evaluate the model's predicted answer against the ground truth answer, based on the context "
    "provided by the question related to the image. Consider the following criteria for evaluation:\n"
    "- **Relevance**: Does the predicted answer directly address the question posed, considering the information "
    "provided by the given question?\n"
    "- **Accuracy**: Compare the predicted answer to the ground truth answer. You need to evaluate from the following "
    "two perspectives:\n"
    "(1) If the ground truth answer is open-ended, consider whether the prediction accurately reflects the information "
    "given in the ground truth without introducing factual inaccuracies. If it does, the prediction should be "
    "considered correct.\n"
    "(2) If the ground truth answer is a definitive answer, strictly compare the model's prediction to the actual "
    "answer. Pay attention to unit conversions such as length and angle, etc. As long as the results are consistent, "
    "the model's prediction should be deemed correct.\n"
    "**Output Format**:\n"
    "Your response should include an integer score indicating the correctness of the prediction: 1 for correct and 0 "
    "for incorrect. Note that 1 means the model's prediction strictly aligns with the ground truth, while 0 means it "
    "does not.\n"
    'The format should be "Score: 0 or 1"'
)

QWEN3_SYSTEM = (
    "You are an expert in verifying if two answers are the same.\n"
    "Your input is a problem and two answers, Answer 1 (**Model Predicted Answer**) and Answer 2 (**Ground Truth "
    "Answer**).\n"
    "Your need to evaluate the model's predicted answer against the ground truth answer.\n"
    "Your task is to determine if two answers are equivalent, without attempting to solve the original problem.\n"
    "Compare the answers to verify they represent identical values or meaning, even when written in different forms "
    "or notations.\n\n"
    "Your output should be only: [[YES]] if the answers are equivalent, or [[NO]] if they are not."
)
QWEN3_USER = (
    "\nProblem: {question}\nAnswer 1 (**Model Predicted Answer**): {prediction}\n"
    "Answer 2 (**Ground Truth Answer**): {ground_truth}\n"
)
QWEN3_EMPTY_PREDICTION = "Invalid Answer. Please output [[NO]]."

VLM_R3_USER = (
    "You are a evaluation expert. Compare the student's answer with the correct answer. Output ONLY '1.0' if the "
    "student's answer matches the correct answer in meaning, or '0.0' if the student's answer does not contain a "
    "correct answer. No other output is allowed.\n" + " " * 20 + "Question: {question}\n"
    "Student's answer: {prediction}\nCorrect answer: {ground_truth}\nOutput only 1.0 or 0.0:"
)

# DeepEyes (verl/utils/reward_score/vl_agent.py, identical at 6c5e796's neighbours fdd3c42 and 04dbb92): the header,
# typos included, then 7 GQA shots, then the item. Byte for byte as their code builds it — including the literal
# backslash-n pair ("\\n\\n") their non-raw triple-quoted header ends with, and the blank lines between shots.
DEEPEYES_SYSTEM = "You are a helpful assistant."
DEEPEYES_HEADER = (
    "Below are two answers to a question. Question is [Question], [Standard Answer] is the standard answer to the "
    "question, and [Model_answer] is the answer extracted from a model's output to this question.  Determine whether "
    "these two answers are consistent.\nNote that [Model Answer] is consistent with [Standard Answer] whenever they "
    "are essentially the same. If the meaning is expressed in the same way, it is considered consistent, for example, "
    "'pink' and 'it is pink'.\nIf they are consistent, Judement is 1; if they are different, Judement is 0. Just "
    "output Judement and don't output anything else."
)
DEEPEYES_SHOTS: tuple[tuple[str, str, str, int], ...] = (
    ("Is the countertop tan or blue?", "The countertop is tan.", "tan", 1),
    ("On which side of the picture is the barrier?", "The barrier is on the left side of the picture.", "left", 1),
    ("Is the kite brown and large?", "Yes, the kite is brown and large.", "Yes", 1),
    ("Are the spots on a giraffe?", "No, the spots are on a banana.", "no", 1),
    ("Who is wearing pants?", "The boy is wearing pants.", "The person in the picture is wearing pants.", 1),
    ("Is the man phone both blue and closed?", "Yes, the man phone is both blue and closed.", "No.", 0),
    (
        "What color is the towel in the center of the picture?",
        "The towel in the center of the picture is blue.",
        "The towel in the center of the picture is pink.",
        0,
    ),
)
"""(question, standard answer, model answer, judgement) of DeepEyes' in-context examples, in their order."""


def _deepeyes_user() -> str:
    shots = "".join(
        f"\n[Question]: {q}\n[Standard Answer]: {a}\n[Model_answer] : {m}\nJudgement: {j}\n\n\n"
        for q, a, m, j in DEEPEYES_SHOTS
    )
    item = "\n[Question]: {question}\n[Standard Answer]: {ground_truth}\n[Model_answer] : {prediction}\nJudgement:"
    return "\n" + DEEPEYES_HEADER + "\\n\\n\n" + shots + item


SR1_USER = (
    "You are provided a question, a gold answer, and a candidate answer. Your task is to judge the correctness of the "
    "candidate answer. Return your judgment enclosed with <judgment> </judgment>.\nQuestion:{question}\n"
    "Reference Answer: {ground_truth}\nCandidate Answer: {prediction}"
)

PROMPTS: dict[str, JudgePrompt] = {
    "visionthink": JudgePrompt("visionthink", VISIONTHINK_USER, parse_score, system=VISIONTHINK_SYSTEM),
    "qwen3": JudgePrompt(
        "qwen3", QWEN3_USER, parse_yes_no, system=QWEN3_SYSTEM, empty_prediction=QWEN3_EMPTY_PREDICTION
    ),
    "vlm_r3": JudgePrompt("vlm_r3", VLM_R3_USER, parse_float_verdict),
    "deepeyes": JudgePrompt("deepeyes", _deepeyes_user(), parse_judgement, system=DEEPEYES_SYSTEM),
    "sr1": JudgePrompt("sr1", SR1_USER, parse_judgment_tag),
}
"""The presets by name. ``visionthink`` (GPT-4o, "Score: 0 or 1") is the default."""


# ====================================================================================================================
# Config
# ====================================================================================================================


class JudgeConfigError(ValueError):
    """A judge config value is missing or invalid; the message names the full key."""


HttpPath = Literal["auto", "openai", "aiohttp"]


@dataclass(frozen=True)
class JudgeConfig:
    """Everything that defines a judge; hashable, and free of secrets (the key is read from ``api_key_env``).

    - ``base_url``: the OpenAI-compatible root (``.../v1``); for Azure, the resource endpoint.
    - ``model``: the model id (Azure: the deployment name).
    - ``api_key_env``: the environment variable holding the key; ``None`` for a judge that needs none. A loopback
      ``base_url`` works without it (placeholder key).
    - ``prompt``: a :data:`PROMPTS` name.
    - ``max_concurrency``: requests in flight per client (the backoff sleeps hold no slot).
    - ``timeout``: seconds per attempt, end to end.
    - ``max_retries``: retries after the first attempt; every retryable failure consumes one.
    - ``backoff_base`` / ``backoff_max``: seconds; full-jitter exponential backoff ``U(0, min(max, base·2^k))``;
      a ``Retry-After`` is honoured up to ``backoff_max``.
    - ``temperature`` / ``max_tokens``: sampling; 0.0 makes the judge deterministic.
    - ``cache_size``: LRU entries of successful verdicts (0 disables the cache).
    - ``extra_body``: merged into the request JSON, e.g. ``{"chat_template_kwargs": {"enable_thinking": True}}``.
    - ``azure_api_version``: use Azure OpenAI (``AsyncAzureOpenAI``) with this API version.
    - ``http``: ``openai`` (the SDK), ``aiohttp`` (lean), or ``auto``: the SDK for ``https://`` and Azure, aiohttp
      for ``http://`` (see the module docstring).
    """

    base_url: str
    model: str
    api_key_env: str | None = "OPENAI_API_KEY"
    prompt: str = "visionthink"
    max_concurrency: int = 64
    timeout: float = 60.0
    max_retries: int = 5
    backoff_base: float = 0.05
    backoff_max: float = 10.0
    temperature: float = 0.0
    max_tokens: int = 512
    cache_size: int = 100_000
    extra_body: Mapping[str, Any] = field(default_factory=dict)
    azure_api_version: str | None = None
    http: HttpPath = "auto"

    def __post_init__(self) -> None:
        # A read-only deep copy: the config is a registry key and must not change under the client that holds it.
        extra_body = json.loads(json.dumps(plain(self.extra_body) or {}))
        object.__setattr__(self, "extra_body", MappingProxyType(extra_body))

        def bad(key: str, why: str) -> JudgeConfigError:
            return JudgeConfigError(f"{CONFIG_KEY}.{key}: {why}")

        if not self.base_url:
            raise bad("base_url", "is empty (give the judge's OpenAI-compatible URL, or a reward router address)")
        if not self.model:
            raise bad("model", "is empty")
        if self.prompt not in PROMPTS:
            raise bad("prompt", f"unknown preset {self.prompt!r}; choose one of {sorted(PROMPTS)}")
        if self.http not in ("auto", "openai", "aiohttp"):
            raise bad("http", f"must be auto, openai or aiohttp, got {self.http!r}")
        for key, minimum in (("max_concurrency", 1), ("max_retries", 0), ("max_tokens", 1), ("cache_size", 0)):
            if getattr(self, key) < minimum:
                raise bad(key, f"must be >= {minimum}, got {getattr(self, key)}")
        if self.timeout <= 0:
            raise bad("timeout", f"must be > 0 seconds, got {self.timeout}")
        for key in ("backoff_base", "backoff_max", "temperature"):
            if getattr(self, key) < 0:
                raise bad(key, f"must be >= 0, got {getattr(self, key)}")
        for key in ("extra_body",):
            reserved = {"model", "messages"} & set(self.extra_body)
            if reserved:
                raise bad(key, f"may not override {sorted(reserved)}")

    def __hash__(self) -> int:
        return hash(self.cache_key)

    @property
    def cache_key(self) -> str:
        """A canonical string of every field (the registry's key)."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values["extra_body"] = dict(self.extra_body)
        return json.dumps(values, sort_keys=True, default=str)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | Any, *, reward_router_address: str | None = None) -> JudgeConfig:
        """Build from a plain dict or an OmegaConf ``DictConfig`` (the ``visionr3.reward.judge`` block).

        ``reward_router_address`` (``host:port``, what verl passes a custom reward function for its reward-model
        router) fills an empty ``base_url`` with ``http://<address>/v1``: a local judge served by verl.
        """
        data = plain(data)
        if not isinstance(data, Mapping):
            raise JudgeConfigError(f"{CONFIG_KEY}: expected a mapping, got {type(data).__name__}")
        data = dict(data)
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise JudgeConfigError(f"{CONFIG_KEY}: unknown keys {unknown}; known: {sorted(known)}")
        if not data.get("base_url") and reward_router_address:
            data["base_url"] = f"http://{reward_router_address}/v1"
        for key in ("base_url", "model"):
            if not data.get(key):
                raise JudgeConfigError(f"{CONFIG_KEY}.{key}: is required")
        for name, value in list(data.items()):
            default = known[name].default
            if value is None or not isinstance(default, (int, float)):
                continue
            try:  # YAML/CLI overrides may hand numbers over as strings
                data[name] = type(default)(value)
            except (TypeError, ValueError) as exc:
                expected = type(default).__name__
                raise JudgeConfigError(f"{CONFIG_KEY}.{name}: expected {expected}, got {value!r}") from exc
        if data.get("extra_body") is None:
            data.pop("extra_body", None)
        return cls(**data)




def resolve_http(config: JudgeConfig) -> Literal["openai", "aiohttp"]:
    """The HTTP path ``config.http`` stands for (``auto``: the SDK for ``https://`` and Azure, else aiohttp)."""
    if config.http != "auto":
        return config.http
    if config.azure_api_version or urlsplit(config.base_url).scheme == "https":
        return "openai"
    return "aiohttp"


def _is_loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _public_url(url: str) -> str:
    """``scheme://host[:port]`` — no user info, path or query, for messages."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    return f"{parts.scheme}://{host}" + (f":{parts.port}" if parts.port else "")


def _read_api_key(config: JudgeConfig) -> str:
    """The key from ``config.api_key_env``; a placeholder where none is needed; else a clear error (no value shown)."""
    name = config.api_key_env
    value = os.environ.get(name, "") if name else ""
    if value:
        return value
    if not name or _is_loopback(config.base_url):
        return PLACEHOLDER_API_KEY
    raise JudgeConfigError(
        f"{CONFIG_KEY}.api_key_env: the environment variable {name} is not set, and the judge at "
        f"{_public_url(config.base_url)} is not on loopback. Export {name}, or point {CONFIG_KEY}.api_key_env at the "
        f"variable that holds the key (null if the endpoint needs none)."
    )


# ====================================================================================================================
# Verdicts and statistics
# ====================================================================================================================


@dataclass(frozen=True)
class Verdict:
    """One judgement.

    ``score``: 1.0 / 0.0 (or the preset's value), ``None`` when every attempt failed — such a sample must be
    excluded, not scored. ``raw``: the judge's last reply (truncated to :data:`RAW_LIMIT`). ``attempts``: HTTP
    attempts made for it (0 when served from the cache). ``cached``: no request of its own (cache hit, or it joined
    an identical request in flight). ``error``: ``"<kind>: <detail>"`` of the last failure, secrets redacted.
    ``elapsed``: seconds from the start of its first attempt (once a concurrency slot was free) to the verdict,
    retries and backoff included — the judge's service time, without queueing behind other requests; 0 if cached.
    """

    score: float | None
    raw: str = ""
    attempts: int = 0
    cached: bool = False
    error: str | None = None
    elapsed: float = 0.0

    @property
    def ok(self) -> bool:
        return self.score is not None


ERROR_KINDS = (
    "timeout", "connection", "rate_limit", "server_error", "retryable_status", "client_error", "malformed",
    "unparseable", "unexpected",
)
"""Failure kinds counted in :attr:`JudgeStats.errors`; all but ``client_error`` (4xx other than 408/409/429) retry."""


@dataclass
class JudgeStats:
    """Counters of one client: ``requests`` (``judge`` calls), ``attempts`` (HTTP requests), ``retries``,
    ``cache_hits``, ``inflight_joins`` (calls that joined an identical request in flight), ``failures`` (verdicts
    with ``score=None``), ``errors`` (failed attempts by kind)."""

    requests: int = 0
    attempts: int = 0
    retries: int = 0
    cache_hits: int = 0
    inflight_joins: int = 0
    failures: int = 0
    errors: Counter[str] = field(default_factory=Counter)

    def as_metrics(self, prefix: str = "judge/") -> dict[str, float]:
        """Flat numbers for a metrics logger, e.g. ``judge/errors/timeout``."""
        out = {f"{prefix}{k}": float(v) for k, v in asdict(self).items() if k != "errors"}
        out.update({f"{prefix}errors/{kind}": float(self.errors.get(kind, 0)) for kind in ERROR_KINDS})
        return out


class _AttemptError(Exception):
    """One failed attempt, already classified. ``detail`` never holds a server message that might quote a key."""

    def __init__(self, kind: str, detail: str, *, retryable: bool = True, retry_after: float | None = None):
        super().__init__(f"{kind}: {detail}")
        self.kind, self.detail, self.retryable, self.retry_after = kind, detail, retryable, retry_after


def retry_after_seconds(headers: Mapping[str, str] | None) -> float | None:
    """Seconds a server asks us to wait: ``retry-after-ms``, else ``Retry-After`` (seconds or an HTTP date)."""
    if not headers:
        return None
    lower = {k.lower(): v for k, v in headers.items()}
    try:
        if "retry-after-ms" in lower:
            return max(0.0, float(lower["retry-after-ms"]) / 1000.0)
    except ValueError:
        pass
    value = lower.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def _status_error(status: int, headers: Mapping[str, str] | None) -> _AttemptError:
    if status == 429:
        return _AttemptError("rate_limit", "HTTP 429", retry_after=retry_after_seconds(headers))
    if status >= 500:
        return _AttemptError("server_error", f"HTTP {status}", retry_after=retry_after_seconds(headers))
    if status in (408, 409):
        return _AttemptError("retryable_status", f"HTTP {status}", retry_after=retry_after_seconds(headers))
    return _AttemptError("client_error", f"HTTP {status}", retryable=False)


def _reply_content(data: Any) -> str:
    """``choices[0].message.content`` of a chat completion, or a ``malformed`` failure."""
    try:
        content = data["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        raise _AttemptError("malformed", "200 without choices[0].message.content") from None
    if not isinstance(content, str):
        raise _AttemptError("malformed", f"message content is {type(content).__name__}, not text")
    return content


# ====================================================================================================================
# The two HTTP paths. Both return the reply text or raise _AttemptError; neither retries.
# ====================================================================================================================


class _OpenAIHttp:
    """The ``openai`` SDK, built on first use in the running loop; SDK retries off."""

    def __init__(self, config: JudgeConfig, api_key: str) -> None:
        self._config, self._api_key, self._client = config, api_key, None

    def prepare(self) -> None:
        """Build the SDK client if needed (importing ``openai`` takes ~1 s: not on an attempt's clock)."""
        if self._client is None:
            self._client = self._build()

    def _build(self) -> Any:
        import openai

        cfg = self._config
        http_client = None
        if hasattr(openai, "DefaultAioHttpClient"):
            try:  # the SDK's aiohttp transport (openai[aiohttp]): roughly half the CPU per request of httpx
                http_client = openai.DefaultAioHttpClient()
            except RuntimeError:
                http_client = None
        common = {"api_key": self._api_key, "timeout": cfg.timeout, "max_retries": 0, "http_client": http_client}
        if cfg.azure_api_version:
            return openai.AsyncAzureOpenAI(azure_endpoint=cfg.base_url, api_version=cfg.azure_api_version, **common)
        return openai.AsyncOpenAI(base_url=cfg.base_url, **common)

    async def chat(self, body: dict[str, Any]) -> str:
        import openai

        self.prepare()
        try:
            data = await self._client.post("/chat/completions", body=body, cast_to=object)
        except openai.APITimeoutError:
            raise _AttemptError("timeout", "no reply within the timeout") from None
        except openai.APIStatusError as exc:
            raise _status_error(exc.status_code, exc.response.headers) from None
        except openai.APIConnectionError as exc:
            raise _AttemptError("connection", type(exc).__name__) from None
        except (openai.APIResponseValidationError, ValueError) as exc:  # JSONDecodeError is a ValueError
            raise _AttemptError("malformed", f"unreadable body ({type(exc).__name__})") from None
        if isinstance(data, (str, bytes)):  # a body the SDK could not read as JSON (e.g. an HTML error page)
            raise _AttemptError("malformed", "the body is not JSON")
        return _reply_content(data)

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None


class _AiohttpHttp:
    """One ``aiohttp.ClientSession``, built on first use in the running loop (proxies from the environment)."""

    def __init__(self, config: JudgeConfig, api_key: str) -> None:
        self._config, self._session = config, None
        base = config.base_url.rstrip("/")
        if config.azure_api_version:
            self._url = f"{base}/openai/deployments/{config.model}/chat/completions"
            self._params: dict[str, str] = {"api-version": config.azure_api_version}
            self._headers = {"api-key": api_key}
        else:
            self._url, self._params = f"{base}/chat/completions", {}
            self._headers = {"Authorization": f"Bearer {api_key}"}
        self._headers["Content-Type"] = "application/json"

    def prepare(self) -> None:
        """Open the session if needed (inside the running loop; not on an attempt's clock).

        The environment's proxy is resolved here, once: aiohttp's ``trust_env=True`` would instead look up the proxy
        and ``~/.netrc`` in a thread for *every* request, two executor hops that profiled at about half this path's CPU.
        """
        if self._session is None:
            import aiohttp
            from urllib.request import getproxies, proxy_bypass

            cfg = self._config
            parts = urlsplit(self._url)
            proxy = None if proxy_bypass(parts.hostname or "") else getproxies().get(parts.scheme)
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=cfg.max_concurrency, limit_per_host=cfg.max_concurrency),
                timeout=aiohttp.ClientTimeout(total=cfg.timeout),
                proxy=proxy,
            )

    async def chat(self, body: dict[str, Any]) -> str:
        import aiohttp

        self.prepare()
        try:
            async with self._session.post(
                self._url, data=json.dumps(body), headers=self._headers, params=self._params or None
            ) as resp:
                status, payload = resp.status, await resp.read()
                headers = dict(resp.headers) if status != 200 else None
        except (asyncio.TimeoutError, TimeoutError):
            raise _AttemptError("timeout", "no reply within the timeout") from None
        except aiohttp.ClientError as exc:
            raise _AttemptError("connection", type(exc).__name__) from None
        if status != 200:
            raise _status_error(status, headers)
        try:
            data = json.loads(payload)
        except ValueError:
            raise _AttemptError("malformed", "the body is not JSON") from None
        return _reply_content(data)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


# ====================================================================================================================
# The client
# ====================================================================================================================


class _Slots:
    """A semaphore of ``n`` request slots whose waiting *retries* are admitted before waiting first attempts.

    Why not ``asyncio.Semaphore``: when a whole batch is submitted at once, its FIFO queue sends a failed request's
    retry to the back of the batch, so one 500 turns a 50 ms judgement into one that waits for the rest of the batch.
    Admitting retries first bounds a retried judgement's latency by a few attempts and changes no total work.
    """

    def __init__(self, n: int) -> None:
        self._free = n
        self._waiting: tuple[deque[asyncio.Future[None]], deque[asyncio.Future[None]]] = (deque(), deque())

    async def acquire(self, retry: bool) -> None:
        if self._free > 0 and not (self._waiting[0] or self._waiting[1]):
            self._free -= 1
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        queue = self._waiting[0 if retry else 1]
        queue.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release()  # the slot was handed over just as we were cancelled: pass it on
            elif waiter in queue:
                queue.remove(waiter)
            raise

    def release(self) -> None:
        for queue in self._waiting:  # retries first
            while queue:
                waiter = queue.popleft()
                if not waiter.done():
                    waiter.set_result(None)  # hand the slot over directly
                    return
        self._free += 1


class _LRU:
    """A thread-safe LRU map of successful verdicts (shared by a config's clients across event loops)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._data: OrderedDict[bytes, Verdict] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: bytes) -> Verdict | None:
        if self.capacity <= 0:
            return None
        with self._lock:
            verdict = self._data.get(key)
            if verdict is not None:
                self._data.move_to_end(key)
            return verdict

    def put(self, key: bytes, verdict: Verdict) -> None:
        if self.capacity <= 0:
            return
        with self._lock:
            self._data[key] = verdict
            self._data.move_to_end(key)
            while len(self._data) > self.capacity:
                self._data.popitem(last=False)

    def __len__(self) -> int:
        return len(self._data)


if sys.version_info >= (3, 11):
    _deadline = asyncio.timeout
else:  # pragma: no cover - Python 3.10
    import contextlib

    @contextlib.asynccontextmanager
    async def _deadline(seconds: float):  # type: ignore[no-redef]
        task = asyncio.current_task()
        handle = asyncio.get_running_loop().call_later(seconds, task.cancel)
        try:
            yield
        except asyncio.CancelledError:
            raise asyncio.TimeoutError from None
        finally:
            handle.cancel()


class JudgeClient:
    """Judges (question, ground truth, prediction) triples against one endpoint; see the module docstring.

    Nothing touches the network or the event loop until the first :meth:`judge`; the API key is read here, when the
    client is built. A client belongs to the event loop of its first call: use :func:`judge_client` to get the
    right one. ``http`` is the HTTP path in use (``config.http`` resolved); ``stats`` its :class:`JudgeStats`.
    """

    def __init__(self, config: JudgeConfig, *, cache: _LRU | None = None) -> None:
        self.config = config
        self.prompt = PROMPTS[config.prompt]
        self._api_key = _read_api_key(config)
        self.http = resolve_http(config)
        self._http = (_OpenAIHttp if self.http == "openai" else _AiohttpHttp)(config, self._api_key)
        self._cache = cache if cache is not None else _LRU(config.cache_size)
        self._inflight: dict[bytes, asyncio.Future[Verdict]] = {}
        self._slots: _Slots | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._rng = random.Random()
        self._body = {"model": config.model, "temperature": config.temperature, "max_tokens": config.max_tokens,
                      **config.extra_body}
        self.stats = JudgeStats()

    def __repr__(self) -> str:
        cfg = self.config
        return (f"JudgeClient(base_url={_public_url(cfg.base_url)!r}, model={cfg.model!r}, prompt={cfg.prompt!r}, "
                f"http={self.http!r}, max_concurrency={cfg.max_concurrency})")

    # -- public API ----------------------------------------------------------------------------------------------------

    async def judge(self, question: str, ground_truth: str, prediction: str) -> Verdict:
        """The judge's verdict on ``prediction`` against ``ground_truth``; never raises for endpoint failures."""
        self._bind_loop()
        self.stats.requests += 1
        messages = self.prompt.messages(question, ground_truth, prediction)
        key = self._key(messages)
        hit = self._cache.get(key)
        if hit is not None:
            self.stats.cache_hits += 1
            return replace(hit, cached=True, attempts=0, elapsed=0.0)
        task = self._inflight.get(key)
        if task is not None:
            self.stats.inflight_joins += 1
            return replace(await asyncio.shield(task), cached=True, attempts=0, elapsed=0.0)
        task = asyncio.ensure_future(self._judge_uncached(messages))
        self._inflight[key] = task
        task.add_done_callback(lambda done: self._settle(key, done))
        # shield: a cancelled caller must not cancel the call that identical callers are waiting for
        return await asyncio.shield(task)

    async def judge_many(self, items: Sequence[tuple[str, str, str]]) -> list[Verdict]:
        """``judge`` over ``(question, ground_truth, prediction)`` triples, concurrently, in order."""
        return list(await asyncio.gather(*(self.judge(q, g, p) for q, g, p in items)))

    async def aclose(self) -> None:
        """Close the HTTP client (the cache stays)."""
        await self._http.aclose()

    # -- internals -----------------------------------------------------------------------------------------------------

    def _bind_loop(self) -> None:
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop, self._slots = loop, _Slots(self.config.max_concurrency)
        elif self._loop is not loop:
            raise RuntimeError(
                "this JudgeClient belongs to another event loop (an HTTP client cannot cross loops); "
                "get one per loop with visionr3.reward.judge.judge_client(config)"
            )

    def _key(self, messages: list[dict[str, str]]) -> bytes:
        # (prompt name + rendered template, which holds question/ground truth/prediction) × model
        h = hashlib.blake2b(digest_size=16)
        h.update(f"{self.prompt.name}\0{self.config.model}\0".encode())
        for message in messages:
            h.update(f"{message['role']}\0{message['content']}\0".encode("utf-8", "surrogatepass"))
        return h.digest()

    def _settle(self, key: bytes, task: asyncio.Future[Verdict]) -> None:
        self._inflight.pop(key, None)
        if not task.cancelled() and task.exception() is None and task.result().ok:
            self._cache.put(key, task.result())

    def _redact(self, text: str) -> str:
        key = self._api_key
        return text.replace(key, "***") if key and key != PLACEHOLDER_API_KEY else text

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        cfg = self.config
        if retry_after is not None:
            return min(cfg.backoff_max, retry_after)
        return self._rng.uniform(0.0, min(cfg.backoff_max, cfg.backoff_base * 2 ** (attempt - 1)))

    async def _judge_uncached(self, messages: list[dict[str, str]]) -> Verdict:
        cfg = self.config
        body = dict(self._body, messages=messages)
        slots = self._slots
        assert slots is not None
        clock = asyncio.get_running_loop().time
        raw, attempt, started = "", 0, None
        while True:
            attempt += 1
            self.stats.attempts += 1
            if attempt > 1:
                self.stats.retries += 1
            try:
                await slots.acquire(retry=attempt > 1)
                try:
                    if started is None:
                        self._http.prepare()
                        started = clock()
                    async with _deadline(cfg.timeout):
                        raw = await self._http.chat(body)
                except (asyncio.TimeoutError, TimeoutError):
                    raise _AttemptError("timeout", "no reply within the timeout") from None
                finally:
                    slots.release()
                score = self.prompt.parse(raw)
                if score is not None:
                    return Verdict(score=score, raw=raw[:RAW_LIMIT], attempts=attempt, elapsed=clock() - started)
                error = _AttemptError("unparseable", f"no {self.prompt.name} verdict in the reply {raw[:80]!r}")
            except _AttemptError as exc:
                error = exc
            except Exception as exc:  # noqa: BLE001 - an unforeseen failure is one failed attempt, never a crash
                error = _AttemptError("unexpected", type(exc).__name__)
            self.stats.errors[error.kind] += 1
            if not error.retryable or attempt > cfg.max_retries:
                break
            delay = self._backoff(attempt, error.retry_after)
            logger.debug("judge attempt %d failed (%s); retrying in %.3fs", attempt, self._redact(str(error)), delay)
            await asyncio.sleep(delay)  # a backing-off request holds no slot
        self.stats.failures += 1
        message = self._redact(f"{error.kind}: {error.detail} (attempt {attempt} of {cfg.max_retries + 1})")
        failures = self.stats.failures
        # An outage fails thousands of samples per step: say so early, then now and then, not once per sample.
        level = logging.WARNING if failures <= 10 or failures % 1000 == 0 else logging.DEBUG
        logger.log(level, "judge failed for a sample (%d failures so far): %s", failures, message)
        elapsed = clock() - started if started is not None else 0.0
        return Verdict(score=None, raw=raw[:RAW_LIMIT], attempts=attempt, error=message, elapsed=elapsed)


# ====================================================================================================================
# Per-process registry
# ====================================================================================================================

_registry_lock = threading.Lock()
_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, JudgeClient]] = weakref.WeakKeyDictionary()
_caches: dict[str, _LRU] = {}


def judge_client(config: JudgeConfig | Mapping[str, Any]) -> JudgeClient:
    """The process's client for ``config`` in the running event loop (built on first request).

    Every reward call in a worker thus shares one HTTP client, its request slots and in-flight table per loop; the
    verdict cache is shared by all loops of the process (it is plain data), so a sync reward function that runs
    ``asyncio.run`` per batch still hits it. Call it from inside the loop that will await the client.
    """
    if not isinstance(config, JudgeConfig):
        config = JudgeConfig.from_dict(config)
    loop = asyncio.get_running_loop()
    key = config.cache_key
    with _registry_lock:
        per_loop = _clients.setdefault(loop, {})
        client = per_loop.get(key)
        if client is None:
            cache = _caches.setdefault(key, _LRU(config.cache_size))
            client = per_loop[key] = JudgeClient(config, cache=cache)
        return client


async def close_judge_clients() -> None:
    """Close the HTTP clients :func:`judge_client` made for the running event loop and forget them.

    A long-lived reward worker never needs this; call it before a loop you created ends (e.g. at the end of an
    ``asyncio.run``) to release connections without "unclosed session" warnings. The verdict cache stays.
    """
    loop = asyncio.get_running_loop()
    with _registry_lock:
        clients = list(_clients.pop(loop, {}).values())
    for client in clients:
        await client.aclose()
