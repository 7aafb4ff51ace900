"""The OpenAI-compatible HTTP endpoint of an :class:`~visionr3.rollout.hf.server.HFServer`: request validation
(:func:`chat_request`), the FastAPI app (:func:`openai_app`), and the server's side of a chat completion
(:class:`OpenAIEndpointMixin`: template rendering, image pads, the reply).

The endpoint (:meth:`OpenAIEndpointMixin.start_http_server`) is uvicorn bound to the port the actor reserved at
start, running as a task on the actor's own event loop; a chat request is validated (:func:`chat_request`; images as
inline ``data:`` URLs only — the server never fetches a URL), rendered with the checkpoint's chat template
(``chat_template_kwargs`` such as ``{"enable_thinking": false}`` are template variables; each image part becomes one
``<|vision_start|><|image_pad|><|vision_end|>`` run, expanded to the image's token count), and then takes exactly
``generate``'s path (:meth:`HFServer._serve`) with the decoded images as ``image_data``. The reply is vLLM's: text
decoded without special tokens, cut at a stop string, ``finish_reason`` ``"stop"``/``"length"``, ``usage``; the served
model name is the local model path (vLLM's default), though any ``model`` string is accepted. Client errors are HTTP
400 with a message.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional

if TYPE_CHECKING:
    from verl.workers.rollout.replica import TokenOutput

    from visionr3.rollout.hf.sampling import _Request
    from visionr3.rollout.hf.server import HFServer

logger = logging.getLogger(__name__)


class OpenAIRequestError(ValueError):
    """Something wrong with an OpenAI request: answered with HTTP 400 and this message (``param``: the field)."""

    def __init__(self, message: str, param: Optional[str] = None) -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class ChatRequest:
    """A validated ``POST /v1/chat/completions`` body, split into what the template and the sampler need."""

    messages: tuple[dict, ...]
    """Every message with its ``content`` flattened to one string (text parts joined by newlines) — or, for a message
    with image parts, a list of ``{"type": "text", "text"}`` and ``{"type": "image"}`` parts in their order (what
    vLLM hands a Qwen-VL template: it renders text parts back to back, each image part as one vision run)."""
    sampling_params: Mapping[str, Any]
    """In :meth:`HFServer.generate`'s vocabulary (``max_tokens``, ``temperature``, ``stop``, ``seed``, ...)."""
    chat_template_kwargs: Mapping[str, Any]
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    include_stop_str_in_output: bool = False
    model: Optional[str] = None
    ignored_fields: tuple[str, ...] = ()
    images: tuple[Any, ...] = ()
    """The decoded (RGB PIL) images of every image part, in the order they appear in ``messages``."""
    mm_processor_kwargs: Mapping[str, Any] = field(default_factory=dict)
    """vLLM's ``mm_processor_kwargs``: image processor options (verl's agent loop passes its own on), used both to
    count an image's tokens and to compute its pixel values."""


# Fields the endpoint takes and passes on as sampling parameters, with their JSON type and the check they must pass.
_CHAT_SAMPLING_FIELDS: dict[str, tuple[type, Any, str]] = {
    "temperature": (float, lambda v: v >= 0, "must be >= 0"),
    "top_p": (float, lambda v: 0 < v <= 1, "must be in (0, 1]"),
    "top_k": (int, lambda v: v >= -1, "must be -1 (off), 0 (off) or a positive integer"),
    "min_p": (float, lambda v: 0 <= v <= 1, "must be in [0, 1]"),
    "repetition_penalty": (float, lambda v: v > 0, "must be > 0"),
    "presence_penalty": (float, None, ""),
    "frequency_penalty": (float, None, ""),
    "min_tokens": (int, lambda v: v >= 0, "must be >= 0"),
    "seed": (int, None, ""),
    "n": (int, lambda v: v >= 1, "must be >= 1"),
    "ignore_eos": (bool, None, ""),
    "skip_special_tokens": (bool, None, ""),
    "logprobs": (bool, None, ""),
}
# Accepted and meaningless for a single-tenant, non-streaming server.
_CHAT_IGNORED_SILENTLY = frozenset(
    {"model", "messages", "user", "metadata", "store", "service_tier", "stream_options", "parallel_tool_calls",
     "tool_choice", "request_id", "priority", "prompt_cache_key", "safety_identifier",
     # vLLM's detokenizer option; transformers' decode never inserts spaces between special tokens
     "spaces_between_special_tokens"}
)
_CHAT_TEMPLATE_RESERVED = frozenset(
    {"conversation", "messages", "tokenize", "return_dict", "return_tensors", "padding", "truncation", "max_length",
     "tokenizer_kwargs", "return_assistant_tokens_mask", "chat_template", "tools", "documents", "processor_kwargs",
     "add_generation_prompt", "continue_final_message"}
)


def _typed(body: Mapping, key: str, kind: type) -> Any:
    value = body.get(key)
    if value is None:
        return None
    if kind is bool:
        ok = isinstance(value, bool)
    elif kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok:
        expected = "a number" if kind is float else kind.__name__
        raise OpenAIRequestError(f"{key!r} must be {expected}, got {value!r}", key)
    return kind(value)


_IMAGE_PART_TYPES = frozenset({"image_url", "input_image"})


def _message_content(content: Any, where: str, images: list, accept_images: bool) -> Any:
    """A message's ``content`` for the chat template: one string when it is text only (text parts joined by
    newlines, as before images were accepted), else the list of text/image parts; decoded images go to ``images``."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise OpenAIRequestError(f"{where}.content must be a string or a list of content parts, got {content!r}")
    parts: list[dict] = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, Mapping) else None
        if kind in ("text", "input_text") and isinstance(part.get("text"), str):
            parts.append({"type": "text", "text": part["text"]})
        elif kind is None or kind in ("text", "input_text"):
            raise OpenAIRequestError(f"{where}.content[{j}] must be {{'type': 'text', 'text': str}}, got {part!r}")
        elif kind in _IMAGE_PART_TYPES:
            if not accept_images:
                raise OpenAIRequestError(
                    f"{where}.content[{j}] is a {kind!r} part, but the model this hf server runs is text-only"
                )
            url = part.get("image_url")
            url = url.get("url") if isinstance(url, Mapping) else url
            images.append(decode_image_url(url, f"{where}.content[{j}]"))
            parts.append({"type": "image"})
        else:
            raise OpenAIRequestError(
                f"{where}.content[{j}] is a {kind!r} part; the hf server's OpenAI endpoint takes text and image_url "
                "parts only"
            )
    if not any(part["type"] == "image" for part in parts):
        return "\n".join(part["text"] for part in parts)
    return parts


def decode_image_url(url: Any, where: str = "image_url") -> Any:
    """An inline ``data:image/<format>;base64,<data>`` URL → an RGB PIL image (:func:`visionr3.processing.open_image`,
    which composites transparency on white as qwen-vl-utils does). Anything else is an :class:`OpenAIRequestError`:
    the server fetches nothing over the network, so ``http(s)://`` (and ``file:``) URLs are refused by name."""
    if not isinstance(url, str) or not url:
        raise OpenAIRequestError(f"{where}.image_url must be {{'url': 'data:image/...;base64,...'}}, got {url!r}")
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme in ("http", "https"):
        raise OpenAIRequestError(
            f"{where}: the hf server does not fetch remote images (no network access); send the image inline as a "
            f"data:image/png;base64,... URL instead of {url[:80]!r}"
        )
    header, sep, payload = url.partition(",")
    if scheme != "data" or not sep or not header.lower().startswith("data:image/") or ";base64" not in header.lower():
        raise OpenAIRequestError(
            f"{where}: only inline base64 images are accepted (data:image/<png|jpeg|...>;base64,<data>), got "
            f"{url[:60]!r}"
        )
    import base64
    import binascii

    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise OpenAIRequestError(f"{where}: the data URL's payload is not valid base64 ({exc})") from None
    from PIL import Image

    from visionr3.processing import open_image

    try:
        image = open_image(data)
        image.load()
    except (OSError, ValueError, Image.DecompressionBombError) as exc:  # UnidentifiedImageError is an OSError
        raise OpenAIRequestError(f"{where}: the data URL ({header}) does not decode to an image: {exc}") from None
    return image


def chat_request(body: Any, *, accept_images: bool = True) -> ChatRequest:
    """Validate an OpenAI chat-completion body (``POST /v1/chat/completions``) → :class:`ChatRequest`.

    Taken: ``messages`` (text parts, and ``image_url`` parts holding inline ``data:image/...;base64`` URLs — decoded
    here, see :func:`decode_image_url`; refused when ``accept_images`` is false, i.e. for a text-only model),
    ``model`` (any string: one model is served), ``max_tokens`` / ``max_completion_tokens`` (the latter wins; absent:
    the rollout config's budget, as in :meth:`HFServer.generate`), ``temperature``, ``top_p``, ``seed``, ``stop``
    (string or list), ``n`` (1), ``logprobs`` (no ``top_logprobs``), ``presence_penalty``/``frequency_penalty`` (0),
    and vLLM's extensions ``top_k``, ``min_p``, ``repetition_penalty``, ``min_tokens``, ``stop_token_ids``,
    ``ignore_eos``, ``skip_special_tokens``, ``include_stop_str_in_output``, ``chat_template_kwargs`` (template
    variables, e.g. ``{"enable_thinking": false}``; a template that does not use one ignores it),
    ``add_generation_prompt`` (True), ``continue_final_message``, ``mm_processor_kwargs`` (image processor options).
    Refused with :class:`OpenAIRequestError`: ``stream``, ``tools``, ``logit_bias``, a non-text ``response_format``,
    a per-request ``chat_template``, and malformed values. Other fields are ignored (listed in ``ignored_fields``).
    """
    if not isinstance(body, Mapping):
        raise OpenAIRequestError(f"the request body must be a JSON object, got {type(body).__name__}")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise OpenAIRequestError("'messages' must be a non-empty list of {'role', 'content'} objects", "messages")
    flat = []
    images: list = []
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping) or not isinstance(message.get("role"), str):
            raise OpenAIRequestError(
                f"messages[{i}] must be an object with a string 'role', got {message!r}", "messages"
            )
        content = _message_content(message.get("content"), f"messages[{i}]", images, accept_images)
        flat.append({**message, "content": content})

    if body.get("stream"):
        raise OpenAIRequestError("streaming is not supported by the hf server; send stream=false", "stream")
    if body.get("tools"):
        raise OpenAIRequestError("tool calling is not supported by the hf server's OpenAI endpoint", "tools")
    if body.get("logit_bias"):
        raise OpenAIRequestError("logit_bias is not supported by the hf server", "logit_bias")
    if body.get("chat_template") is not None:
        raise OpenAIRequestError(
            "a per-request chat_template is not supported; the checkpoint's is used", "chat_template"
        )
    response_format = body.get("response_format")
    if response_format is not None and (
        not isinstance(response_format, Mapping) or response_format.get("type") != "text"
    ):
        raise OpenAIRequestError("only response_format {'type': 'text'} is supported", "response_format")
    top_logprobs = _typed(body, "top_logprobs", int)
    if top_logprobs:
        raise OpenAIRequestError(
            "top_logprobs > 0 is not supported (logprobs=true gives the sampled tokens' log-probabilities)",
            "top_logprobs",
        )

    params: dict[str, Any] = {}
    for key, (kind, check, requirement) in _CHAT_SAMPLING_FIELDS.items():
        value = _typed(body, key, kind)
        if value is None:
            continue
        if check is not None and not check(value):
            raise OpenAIRequestError(f"{key!r} {requirement}, got {value!r}", key)
        params[key] = value
    max_tokens = _typed(body, "max_completion_tokens", int)
    if max_tokens is None:
        max_tokens = _typed(body, "max_tokens", int)
    if max_tokens is not None:
        if max_tokens < 1:
            raise OpenAIRequestError(f"'max_tokens' must be >= 1, got {max_tokens}", "max_tokens")
        params["max_tokens"] = max_tokens
    stop = body.get("stop")
    if stop is not None:
        if isinstance(stop, str):
            stop = [stop]
        if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
            raise OpenAIRequestError(f"'stop' must be a string or a list of strings, got {stop!r}", "stop")
        params["stop"] = [s for s in stop if s]
    stop_token_ids = body.get("stop_token_ids")
    if stop_token_ids is not None:
        if not isinstance(stop_token_ids, list) or not all(
            isinstance(t, int) and not isinstance(t, bool) for t in stop_token_ids
        ):
            raise OpenAIRequestError(
                f"'stop_token_ids' must be a list of integers, got {stop_token_ids!r}", "stop_token_ids"
            )
        params["stop_token_ids"] = stop_token_ids

    template_kwargs = body.get("chat_template_kwargs") or {}
    if not isinstance(template_kwargs, Mapping) or not all(isinstance(k, str) for k in template_kwargs):
        raise OpenAIRequestError(
            f"'chat_template_kwargs' must be an object, got {template_kwargs!r}", "chat_template_kwargs"
        )
    reserved = sorted(_CHAT_TEMPLATE_RESERVED & set(template_kwargs))
    if reserved:
        raise OpenAIRequestError(f"chat_template_kwargs may not set {reserved}", "chat_template_kwargs")
    add_generation_prompt = _typed(body, "add_generation_prompt", bool)
    continue_final_message = bool(_typed(body, "continue_final_message", bool))
    if continue_final_message and add_generation_prompt:
        raise OpenAIRequestError("continue_final_message and add_generation_prompt cannot both be true")
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise OpenAIRequestError(f"'model' must be a string, got {model!r}", "model")
    mm_processor_kwargs = body.get("mm_processor_kwargs") or {}
    if not isinstance(mm_processor_kwargs, Mapping) or not all(isinstance(k, str) for k in mm_processor_kwargs):
        raise OpenAIRequestError(
            f"'mm_processor_kwargs' must be an object, got {mm_processor_kwargs!r}", "mm_processor_kwargs"
        )

    handled = set(_CHAT_SAMPLING_FIELDS) | _CHAT_IGNORED_SILENTLY | {
        "max_tokens", "max_completion_tokens", "stop", "stop_token_ids", "chat_template_kwargs", "stream", "tools",
        "logit_bias", "chat_template", "response_format", "top_logprobs", "add_generation_prompt",
        "continue_final_message", "include_stop_str_in_output", "mm_processor_kwargs",
    }
    return ChatRequest(
        messages=tuple(flat),
        sampling_params=params,
        chat_template_kwargs=dict(template_kwargs),
        add_generation_prompt=not continue_final_message if add_generation_prompt is None else add_generation_prompt,
        continue_final_message=continue_final_message,
        include_stop_str_in_output=bool(_typed(body, "include_stop_str_in_output", bool)),
        model=model,
        ignored_fields=tuple(sorted(k for k in body if k not in handled)),
        images=tuple(images),
        mm_processor_kwargs=dict(mm_processor_kwargs),
    )


def truncate_at_stop(text: str, stop: Sequence[str], include: bool = False) -> tuple[str, Optional[str]]:
    """``(text cut at the earliest stop string, that string)``, or ``(text, None)``; ``include`` keeps the stop
    string (vLLM's ``include_stop_str_in_output``)."""
    found = [(text.find(s), -len(s), s) for s in stop if s and s in text]
    if not found:
        return text, None
    index, _, matched = min(found)
    return text[: index + len(matched) if include else index], matched


def _openai_error(status: int, message: str, param: Optional[str] = None):
    from fastapi.responses import JSONResponse

    kind = "BadRequestError" if status == 400 else "InternalServerError"
    return JSONResponse(
        status_code=status, content={"error": {"message": message, "type": kind, "param": param, "code": status}}
    )


def openai_app(server: "HFServer"):
    """FastAPI app of an :class:`HFServer`: ``POST /v1/chat/completions``, ``GET /v1/models``, ``GET /health``.

    Client errors are 400s with vLLM's error body (``{"error": {"message", "type", "param", "code"}}``), which the
    ``openai`` SDK raises as ``BadRequestError``; an unexpected failure is a 500 with its message. Neither reaches the
    actor: the next request is served as usual.
    """
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse

    # Plain Starlette endpoints (``request`` passed positionally): FastAPI's parameter injection would have to
    # resolve the postponed annotations of this module (``from __future__ import annotations``).
    async def health(request) -> JSONResponse:
        return JSONResponse({})

    async def models(request) -> JSONResponse:
        return JSONResponse(server.list_models())

    async def chat_completions(request) -> JSONResponse:
        try:
            body = await request.json()
        except Exception as exc:
            return _openai_error(400, f"the request body is not valid JSON: {exc}")
        try:
            return JSONResponse(await server.chat_completions(body))
        except OpenAIRequestError as exc:
            return _openai_error(400, str(exc), exc.param)
        except Exception as exc:
            logger.exception("hf server: chat completion failed")
            return _openai_error(500, f"{type(exc).__name__}: {exc}")

    app = FastAPI(title="visionr3 hf rollout server", docs_url=None, redoc_url=None, openapi_url=None)
    app.router.add_route("/health", health, methods=["GET"])
    app.router.add_route("/v1/models", models, methods=["GET"])
    app.router.add_route("/v1/chat/completions", chat_completions, methods=["POST"])
    return app


class OpenAIEndpointMixin:
    """:class:`~visionr3.rollout.hf.server.HFServer`'s side of the OpenAI endpoint: serve :func:`openai_app`, turn a
    :class:`ChatRequest` into prompt ids, and a finished request into the ``chat.completion`` reply.

    Mixed into the actor class (why: :mod:`visionr3.rollout.hf.server`); uses the server's tokenizer, processor and
    its one generation path (``_resolve_request``, ``_serve``).
    """

    @property
    def served_model_name(self) -> str:
        """The name ``/v1/models`` lists: the local model path, vLLM's default (``--served-model-name`` unset)."""
        return self.model_path

    async def start_http_server(self) -> tuple[str, int]:
        """Serve the OpenAI API (:func:`openai_app`) on the reserved port; idempotent; returns ``(host, port)``.

        uvicorn runs as a task of *the calling event loop* — in the Ray actor, the actor's own loop, which keeps
        running between calls — bound to the socket reserved in ``__init__`` (no second bind, no port race).
        """
        if self._http_task is None:
            import uvicorn

            config = uvicorn.Config(
                openai_app(self), log_config=None, log_level="warning", access_log=False, lifespan="off"
            )
            self._http_server = uvicorn.Server(config)
            self._http_task = asyncio.get_running_loop().create_task(
                self._http_server.serve(sockets=[self._port_sock])
            )
        while not self._http_server.started:
            if self._http_task.done():
                error = None if self._http_task.cancelled() else self._http_task.exception()
                raise RuntimeError(f"the hf server's HTTP endpoint on port {self._port} did not start") from error
            await asyncio.sleep(0.01)
        return self._host, self._port

    async def stop_http_server(self) -> None:
        """Stop serving HTTP (the port is released); the actor's token-in/token-out interface keeps working."""
        if self._http_task is not None:
            self._http_server.should_exit = True
            await asyncio.wait_for(self._http_task, timeout=10)
            self._http_task = None

    def list_models(self) -> dict:
        """The body of ``GET /v1/models``."""
        return {
            "object": "list",
            "data": [
                {
                    "id": self.served_model_name,
                    "object": "model",
                    "created": self._created,
                    "owned_by": "visionr3",
                    "root": self.model_path,
                    "max_model_len": self.max_model_len,
                }
            ],
        }

    async def chat_completions(self, body: Any) -> dict:
        """One OpenAI chat completion (the JSON body of ``POST /v1/chat/completions``) → the response body.

        Raises :class:`OpenAIRequestError` (HTTP 400) for anything wrong with the request — including what
        :meth:`_resolve_request` refuses (``n > 1``, penalties, a prompt longer than the context); generation itself
        is :meth:`generate`'s path (admission, model lock, worker thread). See :func:`chat_request` for the fields.
        """
        request_id = f"chatcmpl-{uuid.uuid4().hex}"
        try:
            # image decoding and the image processor run off the event loop, like generation
            chat = await asyncio.to_thread(chat_request, body, accept_images=self.processor is not None)
            for key in chat.ignored_fields:
                self._warn_once(f"openai:{key}", f"hf server's OpenAI endpoint ignores request field {key!r}")
            prompt_ids = await asyncio.to_thread(self._render_chat, chat)
            if not chat.images and self._count_placeholders(prompt_ids):
                raise OpenAIRequestError(
                    "the rendered messages contain image/video placeholder tokens but the request has no image parts"
                )
            request = self._resolve_request(request_id, prompt_ids, dict(chat.sampling_params))
        except OpenAIRequestError:
            raise
        except (ValueError, TypeError, KeyError) as exc:  # template errors, _resolve_request's refusals
            raise OpenAIRequestError(f"{type(exc).__name__}: {exc}") from exc
        out = await self._serve(request, list(chat.images) or None, dict(chat.mm_processor_kwargs) or None)
        return self._chat_response(chat, request, out)

    def _render_chat(self, chat: ChatRequest) -> list[int]:
        """Messages → prompt ids: the checkpoint's chat template (processor's for a VL model), then the tokenizer
        without special tokens added (the template already wrote them) — what vLLM's chat endpoint does. Each image
        part renders as one ``<|image_pad|>``, which is then expanded to that image's token count
        (:meth:`_expand_image_pads`), so the ids are what verl's agent loop would have built."""
        renderer = self.processor if getattr(self.processor, "chat_template", None) else self.tokenizer
        if not getattr(renderer, "chat_template", None):
            raise OpenAIRequestError(f"{self.model_path} has no chat template; the chat endpoint needs one")
        try:
            text = renderer.apply_chat_template(
                list(chat.messages),
                tokenize=False,
                add_generation_prompt=chat.add_generation_prompt,
                continue_final_message=chat.continue_final_message,
                **chat.chat_template_kwargs,
            )
        except Exception as exc:  # jinja's TemplateError (e.g. raise_exception in the template) and friends
            raise OpenAIRequestError(f"the chat template rejected the messages: {type(exc).__name__}: {exc}") from exc
        prompt_ids = self.tokenizer.encode(text, add_special_tokens=False)
        if chat.images:
            prompt_ids = self._expand_image_pads(prompt_ids, list(chat.images), chat.mm_processor_kwargs)
        return prompt_ids

    def _expand_image_pads(self, prompt_ids: list[int], images: list, mm_processor_kwargs: Mapping) -> list[int]:
        """Replace the i-th ``<|image_pad|>`` by ``grid_thw(image i).prod() // merge_size**2`` copies: the image
        processor's own count, computed the way verl's agent loop inserts a tool image."""
        image_processor = self.processor.image_processor
        image_token_id = int(self.processor.image_token_id)
        found = sum(1 for t in prompt_ids if t == image_token_id)
        if found != len(images):
            raise OpenAIRequestError(
                f"the rendered messages hold {found} {self.processor.image_token} placeholder(s) for {len(images)} "
                "image part(s); image placeholders must not be written as text"
            )
        merge = int(getattr(image_processor, "merge_size", 2))
        grids = image_processor(images=images, **dict(mm_processor_kwargs or {}))["image_grid_thw"]
        counts = iter([int(grid.prod()) // merge**2 for grid in grids])
        expanded: list[int] = []
        for token in prompt_ids:
            expanded.extend([token] * next(counts) if token == image_token_id else [token])
        return expanded

    def _chat_response(self, chat: ChatRequest, request: _Request, out: TokenOutput) -> dict:
        """OpenAI's ``chat.completion`` object for one finished request, with vLLM's text and finish semantics."""
        token_ids = list(out.token_ids)
        stop_ids = set(request.stop_token_ids) | (set() if request.ignore_eos else set(self.eos_token_ids))
        text_ids = token_ids
        finish_reason, stop_reason = None, None
        if out.stop_reason == "aborted":
            finish_reason = "abort"
        elif token_ids and token_ids[-1] in stop_ids:  # EOS / stop_token_ids: the token is not part of the text
            text_ids = token_ids[:-1]
            finish_reason = "stop"
            stop_reason = token_ids[-1] if token_ids[-1] in request.stop_token_ids else None
        text = self.tokenizer.decode(text_ids, skip_special_tokens=request.skip_special_tokens)
        if finish_reason != "abort":
            text, matched = truncate_at_stop(text, request.stop, chat.include_stop_str_in_output)
            if matched is not None:
                finish_reason, stop_reason = "stop", matched
            elif finish_reason is None:
                finish_reason = "length" if len(token_ids) >= request.max_tokens else "stop"
        logprobs = None
        if request.want_logprobs and out.log_probs is not None:
            logprobs = {
                "content": [
                    {
                        "token": piece,
                        "logprob": value,
                        "bytes": list(piece.encode("utf-8")),
                        "top_logprobs": [],
                    }
                    for piece, value in (
                        (self.tokenizer.decode([t], skip_special_tokens=False), lp)
                        for t, lp in zip(token_ids, out.log_probs)
                    )
                ]
            }
        return {
            "id": request.request_id,
            "object": "chat.completion",
            "created": int(time.time()),
            "model": chat.model or self.served_model_name,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "logprobs": logprobs,
                    "finish_reason": finish_reason,
                    "stop_reason": stop_reason,
                }
            ],
            "usage": {
                "prompt_tokens": len(request.prompt_ids),
                "completion_tokens": len(token_ids),
                "total_tokens": len(request.prompt_ids) + len(token_ids),
            },
        }


__all__ = [
    "ChatRequest",
    "OpenAIEndpointMixin",
    "OpenAIRequestError",
    "chat_request",
    "decode_image_url",
    "openai_app",
    "truncate_at_stop",
]
