"""A deterministic, in-process stand-in for verl's rollout server that replays scripted assistant turns.

Why it exists: verl's agent loops (``ToolAgentLoop`` and our subclasses) talk to the model only through one call,
``await server_manager.generate(request_id, prompt_ids=..., sampling_params=..., image_data=..., ...)``, which
returns a :class:`verl.workers.rollout.replica.TokenOutput`. Everything else — chat templating, tool-call parsing,
tool execution, image-token expansion, response masks, M-RoPE position ids, padding — is verl's (and our) real code.
:class:`ScriptedServer` implements exactly that call, token-in/token-out, so tests can drive verl's *real*
``AgentLoopWorker``/agent loop on a CPU with no vLLM/SGLang server and no GPU, and decide what "the model" says in
every turn. It is not a mock of visionr3 code: it replaces only the inference engine, and it emulates the parts of
vLLM's behaviour that the agent loop can observe:

* token ids are the script text tokenised with ``tokenizer.encode(text, add_special_tokens=False)``;
* **stop strings** (``sampling_params["stop"]``, a list or one string): the text is cut right after the
  earliest-ending stop string, tokenised, and no ``<|im_end|>`` is appended — vLLM with
  ``include_stop_str_in_output=True``. (vLLM's flag is about its *text*, which verl does not read; the returned
  token ids keep the stop string's tokens either way — confirmed on vLLM's CPU build, tests/eval/test_vllm_cpu.py.
  Where a real model's last token runs past the stop string, e.g. one token ``"]},"``, vLLM returns that token
  while we return the tokens of the cut text);
* **end of turn**: otherwise the turn ends with ``<|im_end|>`` (the Qwen EOS), appended unless the text already
  contains it — text after an ``<|im_end|>`` or after a token in ``sampling_params["stop_token_ids"]`` is never
  generated, as with a real model;
* **token budget**: ``max_tokens = sampling_params["max_tokens"]`` (or ``max_new_tokens``) if set, else vLLM's
  default ``min(response_length, prompt_length + response_length - len(prompt_ids))``, clamped to >= 1
  (``verl/workers/rollout/vllm_rollout/vllm_async_server.py``); the ids are truncated to it;
* **log-probs**: a float per token iff ``sampling_params["logprobs"]`` is truthy (verl's
  ``rollout.calculate_log_probs``), else ``None`` — consistently, as verl's ``align_response_metadata`` requires;
* ``extra_fields`` carries ``global_steps``/``min_global_steps``/``max_global_steps`` like verl's real client, so
  v1 trainer code that reads them does not see ``None``.

Scripts are keyed by ``request_id`` — verl keeps one request id for all turns of a trajectory, and trajectories of a
batch run concurrently, so one shared FIFO of turns would interleave them. A request id seen for the first time takes
the next unused script (FIFO, in the order first calls arrive); later calls with that id take the script's next turn.
Every call is recorded in :attr:`ScriptedServer.calls` (with copies of what verl passed: it hands over its *live*
``image_data`` list), so tests can assert e.g. "the server saw 1, then 2, then 3 images".

Zero latency and no I/O: ``generate`` never awaits, so it is atomic within the event loop.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from verl.workers.rollout.replica import TokenOutput

IM_END = "<|im_end|>"
SCRIPTED_LOG_PROB = -0.1
"""The log-probability reported for every replayed token when ``sampling_params["logprobs"]`` is truthy."""


class ScriptExhaustedError(RuntimeError):
    """The agent loop asked for more trajectories or turns than the scripts provide."""


@dataclass(frozen=True)
class ServerCall:
    """One ``generate`` call as the server saw it (copies, not verl's live objects).

    ``turn`` is the 0-based turn index within the trajectory's script; ``image_sizes`` are the PIL ``(width, height)``
    of every image in ``image_data`` (``None`` for non-PIL entries); ``prompt_length`` is ``len(prompt_ids)``;
    ``script_index`` is the index into the ``scripts`` given to the server; ``response_ids`` are the ids returned and
    ``prompt_ids`` the ids received.
    """

    request_id: str
    turn: int
    num_images: int
    image_sizes: tuple[tuple[int, int] | None, ...]
    prompt_length: int
    sampling_params: Mapping[str, Any]
    script_index: int = -1
    response_ids: tuple[int, ...] = field(default=(), repr=False)
    prompt_ids: tuple[int, ...] = field(default=(), repr=False)


class ScriptedServer:
    """Replays scripted assistant turns through the ``server_manager.generate`` interface of verl's agent loops.

    Args:
        tokenizer: the policy's tokenizer (a Hugging Face tokenizer with ``encode``/``convert_tokens_to_ids``).
        scripts: one list of assistant-turn texts per trajectory, in the order trajectories first call ``generate``.
        prompt_length: ``actor_rollout_ref.rollout.prompt_length`` (for vLLM's default per-turn token budget).
        response_length: ``actor_rollout_ref.rollout.response_length`` (ditto).
    """

    def __init__(
        self,
        tokenizer: Any,
        scripts: Sequence[Sequence[str]],
        *,
        prompt_length: int,
        response_length: int,
    ) -> None:
        if isinstance(scripts, str) or any(isinstance(s, str) for s in scripts):
            raise TypeError("scripts must be a list of scripts, each a list of assistant-turn texts")
        self.tokenizer = tokenizer
        self.scripts: list[list[str]] = [list(script) for script in scripts]
        empty = [i for i, script in enumerate(self.scripts) if not script]
        if empty:
            raise ValueError(f"scripts {empty} are empty; every trajectory generates at least one assistant turn")
        self.prompt_length = int(prompt_length)
        self.response_length = int(response_length)
        self.im_end_id: int = self._token_id(IM_END)
        self.calls: list[ServerCall] = []
        self._script_of: dict[str, int] = {}  # request_id -> script index
        self._next_turn: dict[str, int] = {}  # request_id -> next turn index

    def _token_id(self, token: str) -> int:
        token_id = self.tokenizer.convert_tokens_to_ids(token)
        if token_id is None or token_id == getattr(self.tokenizer, "unk_token_id", object()):
            raise ValueError(f"tokenizer has no {token!r} token; ScriptedServer replays Qwen-style chat turns")
        return int(token_id)

    # ------------------------------------------------------------------------------------------------------------
    # the interface verl's agent loops call
    async def generate(
        self,
        request_id: str,
        *,
        prompt_ids: list[int],
        sampling_params: dict[str, Any],
        image_data: list[Any] | None = None,
        video_data: list[Any] | None = None,
        audio_data: list[Any] | None = None,
        mm_processor_kwargs: dict[str, Any] | None = None,
        mm_processor_output: Any = None,
        **kwargs: Any,
    ) -> TokenOutput:
        """Return the next scripted turn of ``request_id``'s trajectory as a vLLM-like ``TokenOutput``."""
        script_index, turn = self._claim_turn(request_id)
        sampling_params = dict(sampling_params)  # verl reuses the dict for every turn: never mutate it
        ids = self.turn_token_ids(self.scripts[script_index][turn], sampling_params, len(prompt_ids))
        images = list(image_data or [])
        self.calls.append(
            ServerCall(
                request_id=request_id,
                turn=turn,
                num_images=len(images),
                image_sizes=tuple(tuple(img.size) if hasattr(img, "size") else None for img in images),
                prompt_length=len(prompt_ids),
                sampling_params=sampling_params,
                script_index=script_index,
                response_ids=tuple(ids),
                prompt_ids=tuple(prompt_ids),
            )
        )
        log_probs = [SCRIPTED_LOG_PROB] * len(ids) if sampling_params.get("logprobs") else None
        return TokenOutput(
            token_ids=ids,
            log_probs=log_probs,
            stop_reason="completed",
            extra_fields={"global_steps": 0, "min_global_steps": 0, "max_global_steps": 0},
        )

    # ------------------------------------------------------------------------------------------------------------
    def _claim_turn(self, request_id: str) -> tuple[int, int]:
        if request_id not in self._script_of:
            script_index = len(self._script_of)
            if script_index >= len(self.scripts):
                raise ScriptExhaustedError(
                    f"ScriptedServer: request {request_id!r} starts trajectory #{script_index + 1}, but only "
                    f"{len(self.scripts)} script(s) were given (one script per trajectory, n samples included)"
                )
            self._script_of[request_id] = script_index
            self._next_turn[request_id] = 0
        script_index, turn = self._script_of[request_id], self._next_turn[request_id]
        script = self.scripts[script_index]
        if turn >= len(script):
            raise ScriptExhaustedError(
                f"ScriptedServer: request {request_id!r} (script #{script_index}) asked for assistant turn "
                f"{turn + 1}, but its script has only {len(script)} turn(s); the agent loop generated more often than "
                f"scripted (last scripted turn: {script[-1]!r})"
            )
        self._next_turn[request_id] = turn + 1
        return script_index, turn

    def max_tokens(self, sampling_params: Mapping[str, Any], num_prompt_ids: int) -> int:
        """vLLM's per-request token budget as verl's vLLM server computes it (clamped to >= 1)."""
        budget = sampling_params.get("max_tokens") or sampling_params.get("max_new_tokens")
        if not budget:
            budget = min(self.response_length, self.prompt_length + self.response_length - num_prompt_ids)
        return max(1, int(budget))

    def turn_token_ids(self, text: str, sampling_params: Mapping[str, Any], num_prompt_ids: int) -> list[int]:
        """Token ids "generated" for ``text``: stop strings, end of turn and token budget applied (module doc)."""
        stops = sampling_params.get("stop") or []
        if isinstance(stops, str):
            stops = [stops]
        ends = [text.find(s) + len(s) for s in stops if s and s in text]
        stopped_by_string = bool(ends)
        if stopped_by_string:
            text = text[: min(ends)]
        ids = list(self.tokenizer.encode(text, add_special_tokens=False))
        stop_ids = {self.im_end_id, *(int(t) for t in (sampling_params.get("stop_token_ids") or []))}
        first_stop = next((i for i, token_id in enumerate(ids) if token_id in stop_ids), None)
        if first_stop is not None:
            ids = ids[: first_stop + 1]
        elif not stopped_by_string:
            ids.append(self.im_end_id)
        return ids[: self.max_tokens(sampling_params, num_prompt_ids)]

    # ------------------------------------------------------------------------------------------------------------
    # conveniences for assertions
    def calls_by_script(self) -> list[list[ServerCall]]:
        """The recorded calls grouped per script (index = script index), each in turn order."""
        grouped: list[list[ServerCall]] = [[] for _ in self.scripts]
        for call in self.calls:
            grouped[call.script_index].append(call)
        return grouped

    def unused_turns(self) -> dict[int, int]:
        """{script index: number of scripted turns never requested} for every script not fully replayed."""
        used = {self._script_of[r]: self._next_turn[r] for r in self._script_of}
        return {i: len(s) - used.get(i, 0) for i, s in enumerate(self.scripts) if len(s) - used.get(i, 0) > 0}

    def assert_exhausted(self) -> None:
        """Raise AssertionError unless every turn of every script was replayed."""
        unused = self.unused_turns()
        if unused:
            raise AssertionError(f"ScriptedServer: scripted turns never requested (script index: count): {unused}")
