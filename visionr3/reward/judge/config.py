"""What defines a judge: :class:`JudgeConfig` (the client keys of the ``visionr3.reward.judge`` block), its checks, the
HTTP path it resolves to, and the API key read from the environment.

* **Deterministic by default** (temperature 0), where DeepEyes sampled its judge at T0.3 with random seeds.
* **The API key stays out of everything**: it is read from the environment variable ``api_key_env`` when the client is
  built, never stored in the config, and redacted from error texts.

Config (:meth:`JudgeConfig.from_dict` takes these keys)::

    judge:
      base_url: https://api.openai.com/v1   # or empty + verl's reward_router_address for a local judge
      model: gpt-4o-2024-11-20
      api_key_env: OPENAI_API_KEY            # null: no key (a judge that needs none)
      prompt: visionthink                    # visionthink | qwen3 | vlm_r3 | deepeyes | sr1
      extra_body: {chat_template_kwargs: {enable_thinking: true}}   # e.g. a Qwen3 judge on vLLM
"""

from __future__ import annotations

import ipaddress
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any, Literal
from urllib.parse import urlsplit

from visionr3.config import plain
from visionr3.reward.judge.prompts import PROMPTS

CONFIG_KEY = "visionr3.reward.judge"
"""Where the judge's config block lives; error messages name keys under it."""

PLACEHOLDER_API_KEY = "EMPTY"
"""Sent when no key is needed (loopback, or ``api_key_env: null``); vLLM's convention."""



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
      for ``http://`` (see :mod:`visionr3.reward.judge.client`).
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

