"""How the ``"hf"`` server samples one request with vLLM's semantics: :class:`SamplingMixin`, mixed into
:class:`~visionr3.rollout.hf.server.HFServer`.

``_resolve_request`` turns vLLM sampling parameters (and the rollout config's defaults) into a :class:`_Request` with
every decision made; ``_generate_blocking`` runs one or several of them (those with the same :func:`batch_key`) through
one transformers ``generate`` call — the ban on vision placeholders and out-of-vocabulary rows, stop strings, aborts
and log-probabilities included. What each parameter means is documented once, at :meth:`HFServer.generate`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch

from visionr3.rollout.hf.config import _get

_SAMPLING_EPS = 1e-5  # vLLM: temperature below this means greedy
_IGNORED_SAMPLING_KEYS = frozenset(
    # vLLM SamplingParams fields that only shape detokenized text/streaming, which this server does not return
    {"detokenize", "spaces_between_special_tokens", "output_kind", "stream_interval", "flat_logprobs"}
)


@dataclass
class _Request:
    """One generate call, with every sampling decision resolved."""

    request_id: str
    prompt_ids: list[int]
    max_tokens: int
    greedy: bool
    temperature: float
    top_p: float
    top_k: int
    min_p: float
    repetition_penalty: float
    min_tokens: int
    want_logprobs: bool
    logprobs_mode: str
    stop: list[str]
    stop_token_ids: list[int]
    ignore_eos: bool
    seed: Optional[int]
    skip_special_tokens: bool
    mm_inputs: dict = field(default_factory=dict)
    epoch: int = 0


class SamplingMixin:
    """The server's sampling: parameters → :class:`_Request` → tokens (and log-probs).

    Mixed into the actor class (why: :mod:`visionr3.rollout.hf.server`); reads the server's config, context length,
    tokenizer, model and banned-token mask, and its abort bookkeeping through ``_is_aborted``. ``_generate_blocking``
    runs in a worker thread of ``HFServer._run_batch``, under the model lock.
    """

    def _resolve_request(self, request_id: str, prompt_ids: list[int], params: dict) -> _Request:
        config = self.config
        prompt_length = int(_get(config, "prompt_length", 0) or 0)
        response_length = int(_get(config, "response_length", 0) or 0)
        max_possible = self.max_model_len - len(prompt_ids)
        if max_possible < 1:
            raise ValueError(
                f"Prompt length ({len(prompt_ids)}) leaves no room to generate within the model's maximum context "
                f"length ({self.max_model_len}); need at least 1 token of headroom."
            )
        max_tokens = params.pop("max_tokens", None)
        max_new_tokens = params.pop("max_new_tokens", None)
        if max_tokens is None:
            max_tokens = max_new_tokens
        if max_tokens is None:
            max_tokens = min(response_length, prompt_length + response_length - len(prompt_ids))
        max_tokens = max(1, min(int(max_tokens), max_possible))

        temperature = params.pop("temperature", None)
        temperature = float(_get(config, "temperature", 1.0) if temperature is None else temperature)
        do_sample = params.pop("do_sample", None)
        greedy = temperature < _SAMPLING_EPS or do_sample is False
        top_p = params.pop("top_p", None)
        top_p = float(_get(config, "top_p", 1.0) if top_p is None else top_p)
        top_k = params.pop("top_k", None)
        top_k = int(_get(config, "top_k", -1) if top_k is None else top_k)
        repetition_penalty = params.pop("repetition_penalty", None)
        repetition_penalty = float(
            _get(config, "repetition_penalty", 1.0) if repetition_penalty is None else repetition_penalty
        )
        min_p = float(params.pop("min_p", 0.0) or 0.0)
        min_tokens = int(params.pop("min_tokens", 0) or 0)
        want_logprobs = bool(params.pop("logprobs", False))  # vLLM's verl server: `0 if pop("logprobs") else None`
        logprobs_mode = params.pop("logprobs_mode", None) or _get(config, "logprobs_mode", None)
        logprobs_mode = str(logprobs_mode or "processed_logprobs")
        if logprobs_mode not in ("processed_logprobs", "raw_logprobs"):
            raise ValueError(f"logprobs_mode {logprobs_mode!r} not supported by the hf rollout server")
        stop = params.pop("stop", None) or []
        stop = [stop] if isinstance(stop, str) else [s for s in stop if s]
        stop_token_ids = [int(t) for t in (params.pop("stop_token_ids", None) or [])]
        params.pop("include_stop_str_in_output", None)  # text-only in vLLM: see generate()
        ignore_eos = params.pop("ignore_eos", None)
        ignore_eos = bool(_get(config, "ignore_eos", False) if ignore_eos is None else ignore_eos)
        skip_special_tokens = bool(params.pop("skip_special_tokens", True))
        seed = params.pop("seed", None)
        if seed is None and _get(config, "full_determinism", False):
            seed = self.replica_rank + int(_get(config, "seed", 0) or 0)
        n = int(params.pop("n", 1) or 1)
        if n != 1:
            raise ValueError(f"the hf rollout server returns one sequence per request; got n={n}")
        for key in ("presence_penalty", "frequency_penalty"):
            if float(params.pop(key, 0.0) or 0.0) != 0.0:
                raise ValueError(f"sampling parameter {key} is not supported by the hf rollout server")
        for key in list(params):
            if key in _IGNORED_SAMPLING_KEYS:
                params.pop(key)
        for key in params:
            self._warn_once(f"param:{key}", f"hf rollout server ignores sampling parameter {key!r}")

        return _Request(
            request_id=request_id,
            prompt_ids=prompt_ids,
            max_tokens=max_tokens,
            greedy=greedy,
            temperature=temperature,
            top_p=top_p,
            top_k=top_k if top_k > 0 else 0,
            min_p=min_p,
            repetition_penalty=repetition_penalty,
            min_tokens=min_tokens,
            want_logprobs=want_logprobs,
            logprobs_mode=logprobs_mode,
            stop=stop,
            stop_token_ids=stop_token_ids,
            ignore_eos=ignore_eos,
            seed=None if seed is None else int(seed),
            skip_special_tokens=skip_special_tokens,
        )
    def _generate_blocking(self, requests: list[_Request]) -> list[tuple[list[int], Optional[list[float]], bool]]:
        """One transformers ``generate`` call for ``requests`` (one, or several with the same :func:`batch_key`):
        ``(token_ids, log_probs, aborted)`` per request, in order. Runs in a worker thread, holding the model lock.

        Several requests are left-padded into one batch (attention mask 0 on the padding; the images of every row
        concatenated in row order, as the processor would for a batch; ``mm_token_type_ids`` padded with text).
        Everything that may differ between them is decided per row: the token budget, stop strings and aborts (in the
        stopping criterion), and where each row's tokens end (its first EOS/stop token, else where the criterion
        stopped it). What must be shared is in the batch key. One request is exactly the unbatched call: no padding.
        """
        from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList, StoppingCriteria
        from transformers import StoppingCriteriaList

        server = self
        device = self.device
        first = requests[0]
        lengths = [len(r.prompt_ids) for r in requests]
        width = max(lengths)
        banned_mask = self._banned_mask.to(device)

        class BanTokens(LogitsProcessor):
            def __call__(self, input_ids, scores):
                return scores.masked_fill(banned_mask[: scores.shape[-1]], float("-inf"))

        class StopPerRow(StoppingCriteria):
            """Per row: an abort, the row's own token budget, or a stop string. ``ends[i]``: how many tokens row
            ``i`` had when it was first stopped here (EOS and stop token ids are transformers' to stop on)."""

            def __init__(self):
                self.aborted = [False] * len(requests)
                self.ends: list[Optional[int]] = [None] * len(requests)
                self.scanned = [0] * len(requests)

            def __call__(self, input_ids, scores, **kwargs):
                generated = input_ids.shape[1] - width
                for i, request in enumerate(requests):
                    if self.ends[i] is not None:
                        continue
                    stop = False
                    if server._is_aborted(request):
                        self.aborted[i] = stop = True
                    elif generated >= request.max_tokens:
                        stop = True
                    elif request.stop:
                        text = server.tokenizer.decode(
                            input_ids[i, width:].tolist(), skip_special_tokens=request.skip_special_tokens
                        )
                        longest = max(len(s) for s in request.stop)
                        start = max(0, self.scanned[i] - longest - 4)  # a match must end in the new text
                        stop = any(s in text[start:] for s in request.stop)
                        self.scanned[i] = len(text)
                    if stop:
                        self.ends[i] = generated
                done = [end is not None for end in self.ends]
                return torch.tensor(done, dtype=torch.bool, device=input_ids.device)

        eos = [] if first.ignore_eos else list(self.eos_token_ids)
        eos = sorted(set(eos) | set(first.stop_token_ids))
        max_tokens = max(r.max_tokens for r in requests)
        generation = dict(
            max_new_tokens=max_tokens,
            min_new_tokens=min(first.min_tokens, max_tokens) or None,
            eos_token_id=eos or None,
            pad_token_id=self.pad_token_id,
            repetition_penalty=first.repetition_penalty,
            return_dict_in_generate=True,
            output_scores=first.want_logprobs and first.logprobs_mode == "processed_logprobs",
            output_logits=first.want_logprobs and first.logprobs_mode == "raw_logprobs",
            use_cache=True,
            num_beams=1,
        )
        if first.greedy:
            # Sampling fields stay unset (transformers fills its neutral defaults and would warn about any other
            # value); its warpers are not applied without do_sample anyway.
            generation.update(do_sample=False)
        else:
            generation.update(
                do_sample=True,
                temperature=first.temperature,
                top_k=first.top_k,
                top_p=first.top_p,
                min_p=first.min_p if first.min_p > 0 else None,
            )
        generation_config = GenerationConfig(**generation)
        criterion = StopPerRow()

        input_ids = torch.full((len(requests), width), self.pad_token_id, dtype=torch.long, device=device)
        attention_mask = torch.zeros_like(input_ids)
        for i, request in enumerate(requests):
            input_ids[i, width - lengths[i] :] = torch.tensor(request.prompt_ids, dtype=torch.long)
            attention_mask[i, width - lengths[i] :] = 1
        model_inputs = {}
        for key in {key for r in requests for key in r.mm_inputs}:
            if key == "mm_token_type_ids":  # one row per prompt token: left-padded like the prompt (padding is text)
                value = torch.zeros((len(requests), width), dtype=requests[0].mm_inputs[key].dtype)
                for i, request in enumerate(requests):
                    value[i, width - lengths[i] :] = request.mm_inputs[key][0]
            else:  # one row per image patch / per image: every image of the batch, in row order
                value = torch.cat([r.mm_inputs[key] for r in requests if key in r.mm_inputs])
            value = value.to(device)
            if value.is_floating_point():
                value = value.to(self.dtype)
            model_inputs[key] = value
        with torch.no_grad():
            if first.seed is not None:  # batch_key: a seeded request is always alone
                torch.manual_seed(first.seed)
            out = self.model.generate(
                input_ids=input_ids,
                attention_mask=attention_mask,
                generation_config=generation_config,
                logits_processor=LogitsProcessorList([BanTokens()]) if self.banned_token_ids else None,
                stopping_criteria=StoppingCriteriaList([criterion]),
                **model_inputs,
            )
        self.generate_calls += 1
        self.batched_requests += len(requests)

        results = []
        for i, request in enumerate(requests):
            token_ids = out.sequences[i, width:].tolist()
            end = criterion.ends[i] if criterion.ends[i] is not None else len(token_ids)
            stop_at = next((j + 1 for j, t in enumerate(token_ids[:end]) if t in eos), end)
            token_ids = token_ids[: min(end, stop_at)]
            log_probs = None
            if request.want_logprobs:
                steps = out.scores if request.logprobs_mode == "processed_logprobs" else out.logits
                chosen = torch.tensor(token_ids, dtype=torch.long, device=steps[0].device)
                stacked = torch.stack([s[i] for s in steps[: len(token_ids)]]).float()
                log_probs = torch.log_softmax(stacked, dim=-1).gather(-1, chosen[:, None])[:, 0].tolist()
            aborted = criterion.aborted[i] and criterion.ends[i] == len(token_ids)
            results.append((token_ids, log_probs, aborted))
        return results


def batch_key(request: _Request) -> Optional[tuple]:
    """What requests must share to be generated in one batch; ``None``: this request is always generated alone.

    Shared: everything transformers' ``generate`` takes once per call (greedy or the sampling warpers, minimum tokens,
    EOS and stop token ids, which log-probs), and text-only vs with images. Alone: a seeded request (its seed
    re-seeds the generator for its own draws only) and a repetition penalty (transformers would penalise the left
    padding's pad token as if it were in the prompt). Per row, hence free to differ: prompt, images, token budget,
    stop strings, ``skip_special_tokens``.
    """
    if request.seed is not None or request.repetition_penalty != 1.0:
        return None
    sampling = None if request.greedy else (request.temperature, request.top_k, request.top_p, request.min_p)
    return (
        sampling,
        request.min_tokens,
        request.want_logprobs and request.logprobs_mode,
        request.ignore_eos,
        tuple(sorted(set(request.stop_token_ids))),
        bool(request.mm_inputs),
    )


__all__ = ["SamplingMixin", "batch_key"]
