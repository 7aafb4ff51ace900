"""The receiving side of a weight sync, mixed into :class:`~visionr3.rollout.hf.server.HFServer`
(:class:`WeightSyncMixin`); the sending side is :class:`~visionr3.rollout.hf.adapter.HFServerAdapter`.

The server maps the names it receives to its own ``state_dict`` keys (verl sends HF names after
``convert_weight_keys``, which in transformers 5 are the module's own keys; legacy checkpoint names are renamed with
transformers' conversion mapping), ``load_state_dict(strict=False)``s each bucket, and refuses — with the offending
names in the message — any key it cannot place (nothing of that bucket is loaded) and, at the end of the sync, any of
its own keys that were never sent (tied weights count once). After a successful sync the server's weights equal the
actor's.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Sequence
from typing import Optional

import torch

from visionr3.rollout.hf.digests import tensor_digest

logger = logging.getLogger(__name__)


class WeightSyncMixin:
    """The server's weight methods: map the trainer's names to the model's keys, load buckets under the model lock,
    check at the end of a sync that every weight was sent, and digest what the server holds.

    Mixed into the actor class (why: :mod:`visionr3.rollout.hf.server`); uses the server's ``model``, ``model_path``,
    ``options``, ``_lock`` and what ``HFServer._load_model`` derives from the model (``_state_keys``, ``_alias_group``,
    ``_renamings``).
    """

    def _weight_renamings(self) -> list[tuple[str, str]]:
        """(pattern, replacement) pairs that turn legacy checkpoint names into this model's keys."""
        pairs = []
        try:
            from transformers.conversion_mapping import get_model_conversion_mapping

            for transform in get_model_conversion_mapping(self.model) or []:
                sources = getattr(transform, "source_patterns", None)
                targets = getattr(transform, "target_patterns", None)
                if type(transform).__name__ != "WeightRenaming" or not sources or not targets:
                    continue
                if isinstance(sources, str):
                    sources = [sources]
                if isinstance(targets, str):
                    targets = [targets]
                if len(targets) == 1:
                    pairs.extend((source, targets[0]) for source in sources)
        except Exception:  # conversion mappings are a transformers-5 detail; without them names must match exactly
            logger.debug("no transformers weight renamings available", exc_info=True)
        return pairs

    def _resolve_weight_name(self, name: str) -> Optional[str]:
        if name in self._alias_group:
            return name
        candidates = [name]
        for prefix in ("_fsdp_wrapped_module.", "module.", "_orig_mod."):
            candidates += [c.replace(prefix, "") for c in candidates if prefix in c]
        for candidate in candidates:
            if candidate in self._alias_group:
                return candidate
            for pattern, replacement in self._renamings:
                renamed, count = re.subn(pattern, replacement, candidate)
                if count and renamed in self._alias_group:
                    return renamed
        return None

    async def begin_weight_update(self) -> None:
        """Start a weight sync: :meth:`finish_weight_update` then checks that every weight was sent."""
        self._weight_update = set()

    async def load_weights(self, named_tensors: list[tuple[str, torch.Tensor]]) -> list[str]:
        """Load ``(name, tensor)`` pairs (names as verl sends them); returns the server keys loaded.

        Raises ``ValueError`` naming every name that matches no weight of the model, without loading anything of
        this batch; shape mismatches raise too (from ``load_state_dict``).
        """
        mapped: dict[str, torch.Tensor] = {}
        unknown = []
        for name, tensor in named_tensors:
            key = self._resolve_weight_name(name)
            if key is None:
                unknown.append(name)
            else:
                mapped[key] = tensor
        if unknown:
            raise ValueError(
                f"hf rollout server {self.model_path} ({type(self.model).__name__}) has no weight for "
                f"{len(unknown)} received name(s): {sorted(unknown)[:20]}{' ...' if len(unknown) > 20 else ''}; "
                f"its keys look like {self._state_keys[:3]}"
            )
        async with self._lock:
            result = await asyncio.to_thread(self.model.load_state_dict, mapped, strict=False)
        if result.unexpected_keys:  # cannot happen after the check above; keep the guarantee explicit
            raise ValueError(f"unexpected keys while loading weights: {result.unexpected_keys}")
        if self._weight_update is not None:
            self._weight_update.update(mapped)
        return sorted(mapped)

    async def finish_weight_update(
        self, global_steps: Optional[int] = None, allow_partial: Optional[bool] = None
    ) -> dict:
        """End a sync. Raises ``ValueError`` naming the model's weights that were not sent (unless partial updates
        are allowed: argument or ``engine_kwargs.hf.allow_partial_weight_update``)."""
        received = self._weight_update or set()
        self._weight_update = None
        groups = {self._alias_group[k] for k in received}
        missing = [k for k in self._state_keys if self._alias_group[k] not in groups]
        if allow_partial is None:
            allow_partial = bool(self.options.get("allow_partial_weight_update", False))
        if missing and not allow_partial:
            raise ValueError(
                f"weight sync left {len(missing)} of {len(self._state_keys)} weights of the hf rollout server "
                f"unchanged: {missing[:20]}{' ...' if len(missing) > 20 else ''} (names the trainer did not send)"
            )
        if global_steps is not None:
            self.global_steps = global_steps
        return {"loaded": len(received), "missing": missing}

    async def update_weights(
        self, named_tensors: list[tuple[str, torch.Tensor]], global_steps: Optional[int] = None
    ) -> dict:
        """One-shot full sync: :meth:`begin_weight_update`, :meth:`load_weights`, :meth:`finish_weight_update`."""
        await self.begin_weight_update()
        try:
            await self.load_weights(named_tensors)
        except Exception:
            self._weight_update = None
            raise
        return await self.finish_weight_update(global_steps=global_steps)

    async def get_param(self, name: str) -> torch.Tensor:
        """A CPU copy of one weight (server key or any name :meth:`load_weights` accepts), for tests."""
        key = self._resolve_weight_name(name)
        if key is None:
            raise KeyError(name)
        return self.model.state_dict()[key].detach().to("cpu").clone()

    async def get_state_dict_digest(self) -> dict[str, str]:
        """``{key: tensor_digest(weight)}`` of every weight: compare with :func:`tensor_digest` of the sender's."""
        return {key: tensor_digest(value) for key, value in self.model.state_dict().items()}

    async def get_weight_digests(self, names: Sequence[str]) -> dict[str, Optional[str]]:
        """``{name: tensor_digest}`` of the weight each sender's name resolves to (the names :meth:`load_weights`
        accepts; ``None``: no such weight), read under the model lock so no sync is half applied. The trainer
        compares them with the actor's after every weight sync (:func:`weight_mismatches`, ``visionr3.train.trainer``)."""
        async with self._lock:
            state = self.model.state_dict()
            keys = {name: self._resolve_weight_name(name) for name in names}
            return await asyncio.to_thread(
                lambda: {name: None if key is None else tensor_digest(state[key]) for name, key in keys.items()}
            )


__all__ = ["WeightSyncMixin"]
