"""Evaluate through any OpenAI-compatible chat endpoint (``vllm serve``, our hf server, ...) with verl's agent loop.

Why it exists: verl's agent loop talks to the model through one call, token-in/token-out —
``await server.generate(request_id=..., prompt_ids=[...], sampling_params={...}, image_data=[PIL, ...]) ->
TokenOutput`` — and verl starts the engine behind it itself. An evaluation often has a model already served
somewhere (a ``vllm serve`` on a GPU box, a shared endpoint), reachable only through ``POST /v1/chat/completions``.
:class:`OpenAIChatClient` implements that one call on top of the chat API, so the *same* agent loop, tools, prompt
and scoring run against such an endpoint (``visionr3 eval --backend openai``).

How a call is translated (Qwen chat format — ``<|im_start|>role\\n...<|im_end|>\\n`` blocks, images as
``<|vision_start|><|image_pad|>×N<|vision_end|>`` runs — which is what verl builds for Qwen2.5-VL/Qwen3-VL):

1. ``prompt_ids`` are decoded with special tokens kept and split into messages (:func:`prompt_messages`). Each
   vision run becomes an ``image_url`` part holding the next image of ``image_data`` as a base64 PNG ``data:`` URL
   (lossless, so the server sees verl's pixels); the number of runs must equal ``len(image_data)``.
2. The prompt ends with an open ``<|im_start|>assistant\\n``. With nothing after it the request asks for a new turn
   (``add_generation_prompt: true``); with partial assistant text after it — VLM-R3 resumes its turn after an
   inline crop — the partial text is the final assistant message and the request says
   ``continue_final_message: true, add_generation_prompt: false`` (vLLM extensions). A final message that *ends with
   an image* gets an empty text part after it: transformers continues after the last text part of the final message,
   so without one the template would cut the image off.
3. Sampling: ``max_tokens`` (from ``sampling_params``, else vLLM's verl default
   ``min(response_length, prompt_length + response_length - len(prompt_ids))``), ``temperature``, ``top_p``,
   ``seed``, ``stop``, ``n=1``; in ``extra_body`` (vLLM's extensions): ``top_k``, ``repetition_penalty``, ``min_p``,
   ``min_tokens``, ``stop_token_ids``, ``ignore_eos``, ``mm_processor_kwargs`` (so the server's image processor uses
   the pixel budget verl used), and three fixed ones: ``skip_special_tokens: false`` (a special token the model
   writes, e.g. ``<|im_start|>``, survives into the text and so into the ids), ``spaces_between_special_tokens:
   false`` and ``include_stop_str_in_output: true`` (the text keeps the stop string, as vLLM's token ids do).
4. The reply's text is tokenised back into ids. When the turn ended by end-of-sequence (``finish_reason == "stop"``
   and no stop string matched — vLLM reports the matched string as ``stop_reason``) the ``<|im_end|>`` id is appended,
   so the agent loop sees a finished turn exactly as from verl's vLLM server; a matched ``stop_token_ids`` id is
   appended instead; a stop string or ``"length"`` appends nothing.

**The lossy step.** Both directions go through *text*: the server re-tokenises the rendered prompt, and we
re-tokenise its reply. Where verl's ids are the canonical tokenisation of their text (prompts the chat template
rendered, and every turn the model wrote in one piece) nothing changes; otherwise ids may differ while the text is
identical: a generated run of tokens that is not the tokeniser's own split of its text (``"ab" + "c"`` coming back as
``"a" + "bc"``), bytes of a multi-byte character split across a turn boundary (decoded to U+FFFD), or an
``<|endoftext|>`` end-of-sequence (reported like ``<|im_end|>``, we append ``<|im_end|>``). The prompt the server
built can also differ from verl's when its chat template or image processor settings differ from the ones verl used;
the reply's ``usage.prompt_tokens`` is compared with ``len(prompt_ids)`` and every difference is counted in
:attr:`OpenAIChatClient.stats` and logged (the first ones as warnings). Log-probabilities are not returned
(``log_probs=None``): they would belong to the server's tokens, not to ours — evaluation does not need them.

Errors: connection failures, timeouts, 429 and 5xx are retried ``max_retries`` times with exponential backoff
(full jitter; ``Retry-After`` honoured), then :class:`OpenAIBackendError` names the endpoint, the attempts and the last
failure; any other 4xx raises at once with the server's message. The API key is read from the environment variable
named by ``api_key_env`` when the client is built and appears in no message or log.

Plain OpenAI endpoints (``vllm_extensions=False``): only standard fields are sent. Then a turn cannot be continued,
and stop strings are refused (without ``include_stop_str_in_output`` a stop string and end-of-turn look the same).

Example (a ``vllm serve Qwen/Qwen2.5-VL-7B-Instruct`` on port 8000)::

    client = OpenAIChatClient("http://gpu-box:8000/v1", "Qwen/Qwen2.5-VL-7B-Instruct", tokenizer=tokenizer,
                              response_length=2048, prompt_length=8192, max_concurrency=64)
    out = await client.generate(request_id="q1", prompt_ids=ids, sampling_params={"temperature": 0}, image_data=[img])
"""

from __future__ import annotations

import asyncio
import base64
import io
import logging
import os
import random
import re
import weakref
from collections.abc import Mapping, Sequence
from collections import Counter
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from verl.workers.rollout.replica import TokenOutput

logger = logging.getLogger(__name__)

IM_START, IM_END = "<|im_start|>", "<|im_end|>"
VISION_START, VISION_END = "<|vision_start|>", "<|vision_end|>"
IMAGE_PAD, VIDEO_PAD = "<|image_pad|>", "<|video_pad|>"
END_OF_TEXT = "<|endoftext|>"
PLACEHOLDER_API_KEY = "EMPTY"
"""Sent when ``api_key_env`` names no set variable: ``vllm serve`` without ``--api-key`` accepts any key."""

_VISION_RUN = re.compile(re.escape(VISION_START) + f"(?:{re.escape(IMAGE_PAD)})+" + re.escape(VISION_END))
_STATUS_RETRYABLE = frozenset({408, 409, 429})  # and every 5xx
# sampling_params keys verl's agent loop (or a recipe) may set, and where each one goes
_STANDARD_KEYS = ("temperature", "top_p", "seed")
_EXTENSION_KEYS = ("top_k", "repetition_penalty", "min_p", "min_tokens", "stop_token_ids", "ignore_eos")
_HANDLED_ELSEWHERE = frozenset({"max_tokens", "max_new_tokens", "stop", "n", "logprobs", "include_stop_str_in_output"})
# what extension values mean "off": a plain endpoint can take these without being told
_NEUTRAL = {"top_k": (-1, 0, None), "repetition_penalty": (1.0, None), "min_p": (0.0, None), "min_tokens": (0, None),
            "stop_token_ids": (None, [], ()), "ignore_eos": (False, None)}


class OpenAIBackendError(RuntimeError):
    """The endpoint could not produce a turn: unreachable after every retry, or it refused the request (4xx)."""


@dataclass(frozen=True)
class PromptMessages:
    """verl's prompt as chat messages: ``messages`` (OpenAI form) and how the request must end them."""

    messages: list[dict[str, Any]]
    continue_final_message: bool
    """The final message is a partial assistant turn to continue (else a new assistant turn is asked for)."""
    add_generation_prompt: bool


@dataclass
class OpenAIBackendStats:
    """Counters of one client (all event loops together)."""

    requests: int = 0  # generate() calls
    attempts: int = 0  # HTTP requests sent
    retries: int = 0
    failures: int = 0  # generate() calls that raised OpenAIBackendError
    prompt_token_mismatches: int = 0  # replies whose usage.prompt_tokens != len(prompt_ids)
    completion_token_mismatches: int = 0  # replies whose usage.completion_tokens != len(returned ids)
    finish_reasons: Counter = field(default_factory=Counter)  # "stop", "length", ... as the server reported them


# ---------------------------------------------------------------------------------------------------------------------
# pure translation: prompt text -> messages, reply text -> ids
# ---------------------------------------------------------------------------------------------------------------------


def _content(text: str, image_urls: Sequence[str], first: int, where: str) -> tuple[Any, int]:
    """One block's text → a string (no images) or text/image parts; returns ``(content, images used)``."""
    if VIDEO_PAD in text:
        raise NotImplementedError(f"{where} holds a video ({VIDEO_PAD}); the OpenAI backend sends images only")
    parts: list[dict[str, Any]] = []
    used, position = 0, 0
    for run in _VISION_RUN.finditer(text):
        if run.start() > position:
            parts.append({"type": "text", "text": text[position : run.start()]})
        parts.append({"type": "image_url", "image_url": {"url": image_urls[first + used]}})
        used += 1
        position = run.end()
    if position < len(text):
        parts.append({"type": "text", "text": text[position:]})
    stray = [marker for marker in (IMAGE_PAD, VISION_START, VISION_END) if any(
        marker in part.get("text", "") for part in parts
    )]
    if stray:
        raise ValueError(f"{where} holds {stray[0]} outside a complete {VISION_START}{IMAGE_PAD}…{VISION_END} run")
    if not used:
        return text, 0
    return parts, used


def prompt_messages(prompt: str, image_urls: Sequence[str]) -> PromptMessages:
    """Split a decoded Qwen chat prompt into OpenAI chat messages (see the module docstring, steps 1–2).

    ``prompt`` must be whole ``<|im_start|>role\\n…<|im_end|>\\n`` blocks, optionally ending with an open
    ``<|im_start|>assistant\\n`` and partial assistant text. ``image_urls`` fill the vision runs in order; their
    number must equal the number of runs. Raises ``ValueError`` naming what does not fit.
    """
    if not prompt.startswith(IM_START):
        raise ValueError(f"the prompt does not start with {IM_START} (a Qwen chat rendering): {prompt[:60]!r}")
    runs = len(_VISION_RUN.findall(prompt))
    if runs != len(image_urls):
        raise ValueError(
            f"the prompt holds {runs} image run(s) ({VISION_START}{IMAGE_PAD}…{VISION_END}) but image_data has "
            f"{len(image_urls)} image(s); every image must appear in the prompt, in order"
        )
    blocks = prompt.split(IM_START)[1:]
    messages: list[dict[str, Any]] = []
    used = 0
    continue_final = False
    add_generation_prompt = False
    for i, block in enumerate(blocks):
        last = i == len(blocks) - 1
        role, newline, rest = block.partition("\n")
        where = f"message {i} ({role!r})"
        if not newline or not role or IM_END in role:
            raise ValueError(f"{where}: expected {IM_START}role\\n…, got {block[:60]!r}")
        body, closed, tail = rest.partition(IM_END)
        if closed:
            if tail != "\n":
                raise ValueError(f"{where}: {IM_END} must be followed by exactly one newline, got {tail[:40]!r}")
        elif not last:
            raise ValueError(f"{where} is not closed with {IM_END}")
        elif role != "assistant":
            raise ValueError(f"the prompt ends inside an open {role!r} message; only assistant turns are generated")
        content, n = _content(body, image_urls, used, where)
        used += n
        if closed:
            messages.append({"role": role, "content": content})
        elif body == "":
            add_generation_prompt = True
        else:
            if isinstance(content, list) and content[-1]["type"] != "text":
                content.append({"type": "text", "text": ""})  # continue *after* the image (module docstring, step 2)
            messages.append({"role": role, "content": content})
            continue_final = True
    if not messages:
        raise ValueError("the prompt holds no complete message")
    return PromptMessages(messages, continue_final_message=continue_final, add_generation_prompt=add_generation_prompt)


def reply_token_ids(
    text: str,
    finish_reason: str | None,
    stop_reason: Any,
    stop: Sequence[str],
    tokenizer: Any,
    im_end_id: int,
) -> list[int]:
    """The reply's text as token ids, finished the way verl's vLLM server finishes them (module docstring, step 4).

    ``stop_reason`` is vLLM's: the matched stop string, the matched ``stop_token_ids`` id, or ``None`` (end of
    sequence or length). Servers that do not report it: a reply ending with a requested stop string counts as stopped
    by it.
    """
    def encode(value: str) -> list[int]:
        return list(tokenizer.encode(value, add_special_tokens=False))

    if finish_reason != "stop":
        return encode(text)
    if isinstance(stop_reason, str) or (stop_reason is None and any(s and text.endswith(s) for s in stop)):
        return encode(text)
    if isinstance(stop_reason, int) and not isinstance(stop_reason, bool):
        token = tokenizer.decode([stop_reason], skip_special_tokens=False)
        if token and text.endswith(token):  # include_stop_str_in_output put the token's text in
            text = text[: -len(token)]
        return encode(text) + [stop_reason]
    for token in (IM_END, END_OF_TEXT):  # vLLM writes the EOS text when include_stop_str_in_output is on
        if text.endswith(token):
            text = text[: -len(token)]
            break
    return encode(text) + [im_end_id]


def image_data_url(image: Any) -> str:
    """A ``data:image/png;base64,...`` URL of ``image`` (PIL, or anything :func:`visionr3.processing.open_image`
    reads). PNG, so the server decodes exactly verl's pixels; compression level 1 because encoding time matters more
    than bytes on the wire here."""
    from PIL import Image

    if not isinstance(image, Image.Image):
        from visionr3.processing import open_image

        image = open_image(image)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _public_url(url: str) -> str:
    """``scheme://host[:port]/path`` without user info or query, for messages."""
    parts = urlsplit(url)
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{parts.hostname or ''}{port}{parts.path}"


# ---------------------------------------------------------------------------------------------------------------------
# the client
# ---------------------------------------------------------------------------------------------------------------------


class OpenAIChatClient:
    """verl's ``generate`` over an OpenAI-compatible chat endpoint (see the module docstring).

    Args:
        base_url: the API root, e.g. ``http://host:8000/v1``.
        model: the served model name; ``None`` asks ``GET /v1/models`` once and takes its only model.
        tokenizer: the policy's tokenizer (an object with ``encode``/``decode``/``convert_tokens_to_ids``, or a path
            for ``AutoTokenizer.from_pretrained``): it decodes ``prompt_ids`` and tokenises the replies.
        api_key_env: environment variable holding the API key (``None`` or unset: :data:`PLACEHOLDER_API_KEY`).
        timeout: seconds per HTTP attempt. max_retries: retries after the first attempt for retryable failures.
        backoff_base, backoff_max: seconds; attempt ``k`` waits ``uniform(0, min(max, base * 2**(k-1)))``.
        max_concurrency: requests in flight at once (per event loop).
        prompt_length, response_length: ``rollout.prompt_length``/``response_length``, for the default
            ``max_tokens`` when ``sampling_params`` has none (no default at all if ``response_length`` is ``None``).
        vllm_extensions: send vLLM's extra fields (module docstring); ``False`` for a plain OpenAI endpoint.
        forward_mm_processor_kwargs: pass verl's ``mm_processor_kwargs`` on (vLLM's request field).
    """

    def __init__(
        self,
        base_url: str,
        model: str | None,
        *,
        tokenizer: Any,
        api_key_env: str | None = "OPENAI_API_KEY",
        timeout: float = 600.0,
        max_retries: int = 3,
        backoff_base: float = 1.0,
        backoff_max: float = 30.0,
        max_concurrency: int = 32,
        prompt_length: int | None = None,
        response_length: int | None = None,
        vllm_extensions: bool = True,
        forward_mm_processor_kwargs: bool = True,
    ) -> None:
        if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must be an http(s) URL such as http://host:8000/v1, got {base_url!r}")
        for name, value, minimum in (("max_retries", max_retries, 0), ("max_concurrency", max_concurrency, 1)):
            if int(value) < minimum:
                raise ValueError(f"{name} must be >= {minimum}, got {value}")
        if timeout <= 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout}")
        self.base_url = base_url.rstrip("/")
        self.model = model
        if isinstance(tokenizer, (str, os.PathLike)):
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(os.fspath(tokenizer))
        self.tokenizer = tokenizer
        self.im_end_id = self._token_id(IM_END)
        self.api_key_env = api_key_env
        self._api_key = (os.environ.get(api_key_env) if api_key_env else None) or PLACEHOLDER_API_KEY
        self.timeout = float(timeout)
        self.max_retries = int(max_retries)
        self.backoff_base, self.backoff_max = float(backoff_base), float(backoff_max)
        self.max_concurrency = int(max_concurrency)
        self.prompt_length = prompt_length
        self.response_length = response_length
        self.vllm_extensions = bool(vllm_extensions)
        self.forward_mm_processor_kwargs = bool(forward_mm_processor_kwargs)
        self.stats = OpenAIBackendStats()
        self._rng = random.Random()
        self._warned: set[str] = set()
        # The SDK's HTTP client belongs to the event loop it was built in: one per loop, built on first use.
        self._per_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, tuple[Any, asyncio.Semaphore]] = (
            weakref.WeakKeyDictionary()
        )

    def __repr__(self) -> str:  # no key, ever
        return f"OpenAIChatClient({_public_url(self.base_url)!r}, model={self.model!r})"

    def _token_id(self, token: str) -> int:
        token_id = self.tokenizer.convert_tokens_to_ids(token)
        if token_id is None or token_id == getattr(self.tokenizer, "unk_token_id", object()):
            raise ValueError(f"the tokenizer has no {token!r} token; the OpenAI backend speaks the Qwen chat format")
        return int(token_id)

    def _loop_state(self) -> tuple[Any, asyncio.Semaphore]:
        loop = asyncio.get_running_loop()
        state = self._per_loop.get(loop)
        if state is None:
            import openai

            client = openai.AsyncOpenAI(
                base_url=self.base_url, api_key=self._api_key, timeout=self.timeout, max_retries=0
            )
            state = self._per_loop[loop] = (client, asyncio.Semaphore(self.max_concurrency))
        return state

    async def aclose(self) -> None:
        """Close the HTTP client of the running event loop (others close with their loops)."""
        state = self._per_loop.pop(asyncio.get_running_loop(), None)
        if state is not None:
            await state[0].close()

    def _warn_once(self, key: str, message: str, *args: Any) -> None:
        if key not in self._warned:
            self._warned.add(key)
            logger.warning(message, *args)

    # -- the interface verl's agent loop calls -------------------------------------------------------------------------

    async def generate(
        self,
        request_id: str,
        *,
        prompt_ids: list[int],
        sampling_params: Mapping[str, Any],
        image_data: list[Any] | None = None,
        video_data: list[Any] | None = None,
        audio_data: list[Any] | None = None,
        mm_processor_kwargs: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> TokenOutput:
        """One assistant turn for ``prompt_ids`` (with ``image_data``, every image of the conversation so far).

        Returns ``TokenOutput(token_ids, log_probs=None, stop_reason="completed" | "aborted", num_preempted=0,
        extra_fields={"global_steps": 0, "min_global_steps": 0, "max_global_steps": 0})`` — only the keys verl's
        server client adds: the agent loop copies a first turn's ``extra_fields`` into the trajectory's, so per-turn
        facts (finish reason, the server's token counts) go to :attr:`stats` instead.
        Raises ``ValueError`` for a prompt that does not match its images, ``NotImplementedError`` for video/audio,
        :class:`OpenAIBackendError` when the endpoint fails.
        """
        if video_data:
            raise NotImplementedError("the OpenAI backend does not send videos")
        if audio_data:
            raise NotImplementedError("the OpenAI backend does not send audio")
        self.stats.requests += 1
        prompt_ids = [int(t) for t in prompt_ids]
        images = list(image_data or [])
        params = dict(sampling_params or {})
        image_urls = await asyncio.to_thread(lambda: [image_data_url(image) for image in images]) if images else []
        prompt = self.tokenizer.decode(prompt_ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        chat = prompt_messages(prompt, image_urls)
        request = self._request_body(chat, params, len(prompt_ids), mm_processor_kwargs)

        client, slots = self._loop_state()
        if request["model"] is None:
            request["model"] = self.model = await self._discover_model(client)
        async with slots:
            completion = await self._complete(client, request, request_id)

        choice = completion.choices[0]
        text = (choice.message.content or "") if choice.message is not None else ""
        extra = getattr(choice, "model_extra", None) or {}
        stop_reason = extra.get("stop_reason")
        stops = request.get("stop") or []
        token_ids = reply_token_ids(text, choice.finish_reason, stop_reason, stops, self.tokenizer, self.im_end_id)
        usage = completion.usage
        server_prompt = getattr(usage, "prompt_tokens", None)
        server_completion = getattr(usage, "completion_tokens", None)
        if server_prompt is not None and server_prompt != len(prompt_ids):
            self.stats.prompt_token_mismatches += 1
            level = logging.WARNING if self.stats.prompt_token_mismatches <= 5 else logging.DEBUG
            logger.log(
                level,
                "OpenAI backend: the server built a %d-token prompt for request %s, verl's has %d tokens (chat "
                "template or image processor settings differ from the ones verl used?)",
                server_prompt, request_id, len(prompt_ids),
            )
        if server_completion is not None and server_completion != len(token_ids):
            self.stats.completion_token_mismatches += 1
        self.stats.finish_reasons[str(choice.finish_reason)] += 1
        return TokenOutput(
            token_ids=token_ids,
            log_probs=None,
            stop_reason="aborted" if choice.finish_reason == "abort" else "completed",
            num_preempted=0,
            extra_fields={"global_steps": 0, "min_global_steps": 0, "max_global_steps": 0},
        )

    # -- request building ----------------------------------------------------------------------------------------------

    def _request_body(
        self, chat: PromptMessages, params: dict[str, Any], num_prompt_ids: int, mm_processor_kwargs: Any
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.model, "messages": chat.messages, "n": 1}
        max_tokens = params.get("max_tokens", params.get("max_new_tokens"))
        if max_tokens is None and self.response_length is not None:
            max_tokens = self.response_length
            if self.prompt_length is not None:
                max_tokens = min(max_tokens, self.prompt_length + self.response_length - num_prompt_ids)
        if max_tokens is not None:
            body["max_tokens"] = max(1, int(max_tokens))
        for key in _STANDARD_KEYS:
            if params.get(key) is not None:
                body[key] = params[key]
        n = params.get("n")
        if n not in (None, 1):
            raise ValueError(f"the OpenAI backend returns one sequence per call; got n={n}")
        stop = params.get("stop")
        stop = [stop] if isinstance(stop, str) else [s for s in (stop or []) if s]
        if stop:
            body["stop"] = stop
        if params.get("logprobs"):
            self._warn_once("logprobs", "OpenAI backend: log-probs are not returned (ids are re-tokenised text)")
        unknown = sorted(set(params) - set(_STANDARD_KEYS) - set(_EXTENSION_KEYS) - _HANDLED_ELSEWHERE)
        for key in unknown:
            self._warn_once(f"param:{key}", "OpenAI backend ignores sampling parameter %r", key)

        if not self.vllm_extensions:
            refused = [k for k in _EXTENSION_KEYS if params.get(k) not in _NEUTRAL[k]]
            if refused:
                raise ValueError(f"sampling parameters {refused} need vLLM's extensions (vllm_extensions=True)")
            if chat.continue_final_message:
                raise ValueError("continuing a partial assistant turn needs vLLM's continue_final_message")
            if stop:
                raise ValueError(
                    "stop strings need vLLM's include_stop_str_in_output (vllm_extensions=True): a plain endpoint "
                    "reports a stop string and the end of a turn alike"
                )
            return body

        extra: dict[str, Any] = {
            "skip_special_tokens": False,
            "spaces_between_special_tokens": False,
            "include_stop_str_in_output": True,
            "add_generation_prompt": chat.add_generation_prompt,
            "continue_final_message": chat.continue_final_message,
        }
        for key in _EXTENSION_KEYS:
            if params.get(key) is not None:
                extra[key] = params[key]
        if self.forward_mm_processor_kwargs and mm_processor_kwargs:
            extra["mm_processor_kwargs"] = dict(mm_processor_kwargs)
        body["extra_body"] = extra
        return body

    # -- HTTP ----------------------------------------------------------------------------------------------------------

    async def _discover_model(self, client: Any) -> str:
        import openai

        try:
            models = [m.id for m in (await client.models.list()).data]
        except openai.APIError as exc:
            detail = _error_message(exc) if isinstance(exc, openai.APIStatusError) else type(exc).__name__
            raise OpenAIBackendError(
                f"cannot list the models at {_public_url(self.base_url)} to find the one to use ({detail}); "
                "name it with model="
            ) from None
        if len(models) != 1:
            raise OpenAIBackendError(
                f"{_public_url(self.base_url)} serves {len(models)} models ({models[:5]}); name one with model="
            )
        return models[0]

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(self.backoff_max, retry_after)
        return self._rng.uniform(0.0, min(self.backoff_max, self.backoff_base * 2 ** (attempt - 1)))

    async def _complete(self, client: Any, request: dict[str, Any], request_id: str) -> Any:
        """POST the request, retrying what may pass (connection, timeout, 408/409/429/5xx, an unreadable body)."""
        import openai

        where = _public_url(self.base_url)
        attempts = self.max_retries + 1
        for attempt in range(1, attempts + 1):
            self.stats.attempts += 1
            retry_after = None
            try:
                completion = await client.chat.completions.create(**request)
                if getattr(completion, "choices", None):
                    return completion
                failure = "the reply has no choices"
            except openai.APIStatusError as exc:
                detail = _error_message(exc)
                if exc.status_code < 500 and exc.status_code not in _STATUS_RETRYABLE:
                    self.stats.failures += 1
                    hint = f" (is {self.api_key_env} set?)" if exc.status_code in (401, 403) else ""
                    raise OpenAIBackendError(
                        f"{where} refused the chat request for {request_id} (HTTP {exc.status_code}): {detail}{hint}"
                    ) from None
                failure = f"HTTP {exc.status_code}: {detail}"
                retry_after = _retry_after(exc)
            except openai.APITimeoutError:
                failure = f"no reply within {self.timeout:g}s"
            except openai.APIConnectionError as exc:
                failure = f"cannot connect ({type(exc.__cause__ or exc).__name__})"
            except (openai.APIResponseValidationError, ValueError) as exc:
                failure = f"unreadable reply ({type(exc).__name__})"
            if attempt == attempts:
                self.stats.failures += 1
                raise OpenAIBackendError(
                    f"chat completion at {where} failed for {request_id} after {attempts} attempt(s): {failure}"
                )
            self.stats.retries += 1
            delay = self._backoff(attempt, retry_after)
            logger.info("OpenAI backend: attempt %d/%d failed (%s); retrying in %.2fs", attempt, attempts, failure,
                        delay)
            await asyncio.sleep(delay)
        raise AssertionError("unreachable")


def _error_message(exc: Any) -> str:
    """The server's own error message (OpenAI/vLLM body ``{"error": {"message"}}``), else the SDK's."""
    body = getattr(exc, "body", None)
    if isinstance(body, Mapping):
        error = body.get("error", body)
        if isinstance(error, Mapping) and error.get("message"):
            return str(error["message"])[:500]
        if isinstance(body.get("message"), str):
            return body["message"][:500]
    return str(getattr(exc, "message", exc))[:500]


def _retry_after(exc: Any) -> float | None:
    try:
        value = exc.response.headers.get("retry-after")
        return max(0.0, float(value)) if value is not None else None
    except (AttributeError, TypeError, ValueError):
        return None


__all__ = [
    "OpenAIBackendError",
    "OpenAIBackendStats",
    "OpenAIChatClient",
    "PromptMessages",
    "image_data_url",
    "prompt_messages",
    "reply_token_ids",
]
