"""The judge client: one :class:`JudgeClient` per endpoint, process and event loop, with bounded retries, request
slots, a verdict cache and statistics. Both HTTP paths speak ``POST {base_url}/chat/completions``, so one client
serves a remote API (GPT-4o, Azure, DashScope) and a local judge (vLLM/HF behind verl's reward router).

* **Failures are bounded and visible.** Each attempt consumes one retry — VisionThink's client retried
  ``RateLimitError`` without counting and could loop forever. Retries back off exponentially with full jitter and
  honour ``Retry-After``/``retry-after-ms`` (capped). After ``max_retries`` the verdict is ``score=None`` with an
  error kind; the reward code filters that sample (VisionThink's ``is_filter``) instead of crashing or hanging.

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

Use from an async reward function::

    client = judge_client(config)            # one per process and event loop
    verdict = await client.judge(question, ground_truth, prediction)
    if verdict.score is None: ...            # failed after retries: exclude the sample, do not score it 0
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import random
import sys
import threading
import time
import weakref
from collections import Counter, OrderedDict, deque
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit

from visionr3.reward.judge.config import PLACEHOLDER_API_KEY, JudgeConfig, _public_url, _read_api_key, resolve_http
from visionr3.reward.judge.prompts import PROMPTS

logger = logging.getLogger(__name__)

RAW_LIMIT = 2000
"""Characters of the judge's last reply kept in :attr:`Verdict.raw`."""


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
            async with _deadline(self._config.timeout):  # a backstop over the SDK's own timeout
                data = await self._client.post("/chat/completions", body=body, cast_to=object)
        except (openai.APITimeoutError, asyncio.TimeoutError, TimeoutError):
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
        """One attempt; the session's ``ClientTimeout(total=timeout)`` bounds it end to end (connect, send, read)."""
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


def _cancelling() -> bool:
    """Whether the current task has a cancellation pending (always False before Python 3.11, which cannot tell)."""
    task = asyncio.current_task()
    return bool(task is not None and getattr(task, "cancelling", lambda: 0)())


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
        while (pending := self._inflight.get(key)) is not None:
            self.stats.inflight_joins += 1
            try:
                # shield: a cancelled joiner must not cancel the call that its owner and other joiners wait for
                verdict = await asyncio.shield(pending)
            except asyncio.CancelledError:
                if pending.cancelled() and not _cancelling():
                    continue  # the call's owner was cancelled, not us: make the call ourselves
                raise
            return replace(verdict, cached=True, attempts=0, elapsed=0.0)
        # The first caller makes the call in the task it runs in, and identical callers meanwhile wait on `shared`: a
        # task of its own per judgement cost about half of the client's own CPU (bench_judge.py, NOTE.md).
        shared: asyncio.Future[Verdict] = asyncio.get_running_loop().create_future()
        self._inflight[key] = shared
        try:
            verdict = await self._judge_uncached(messages)
        except BaseException:
            shared.cancel()  # joiners retry on their own (see above)
            raise
        finally:
            del self._inflight[key]
        if verdict.ok:
            self._cache.put(key, verdict)
        shared.set_result(verdict)
        return verdict

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
                "get one per loop with visionr3.reward.judge.client.judge_client(config)"
            )

    def _key(self, messages: list[dict[str, str]]) -> bytes:
        # (prompt name + rendered template, which holds question/ground truth/prediction) × model
        h = hashlib.blake2b(digest_size=16)
        h.update(f"{self.prompt.name}\0{self.config.model}\0".encode())
        for message in messages:
            h.update(f"{message['role']}\0{message['content']}\0".encode("utf-8", "surrogatepass"))
        return h.digest()

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
            if logger.isEnabledFor(logging.DEBUG):
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
