"""Weight digests: SHA-256 of tensors, so the trainer (and a test) can tell whether a replica holds exactly the
actor's weights — :func:`replica_weight_report` is the trainer's weight-sync check (see :mod:`visionr3.train.trainer`)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Optional

import ray
import torch


def tensor_digest(tensor: torch.Tensor) -> str:
    """SHA-256 of a tensor's dtype, shape and bytes (CPU, contiguous): equal digests mean bit-identical tensors."""
    t = tensor.detach().to("cpu").contiguous()
    h = hashlib.sha256(f"{t.dtype}|{tuple(t.shape)}|".encode())
    if t.numel():
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def named_tensor_digests(named_tensors: Iterable[tuple[str, torch.Tensor]], dtype: Optional[str] = None) -> dict[str, str]:
    """``{name: tensor_digest}`` of ``(name, tensor)`` pairs, floating tensors cast to ``dtype`` first (e.g. the
    replica's ``"float32"``: a bf16 replica holds the fp32 actor's weights rounded, and that is still "in sync").
    A DTensor is gathered (``full_tensor``, a collective: every rank must iterate)."""
    cast = getattr(torch, dtype) if dtype else None
    digests: dict[str, str] = {}
    for name, tensor in named_tensors:
        tensor = tensor.detach()
        if hasattr(tensor, "full_tensor"):
            tensor = tensor.full_tensor()
        if cast is not None and tensor.is_floating_point():
            tensor = tensor.to(cast)
        digests[name] = tensor_digest(tensor)
    return digests


def combined_digest(digests: Mapping[str, Optional[str]]) -> str:
    """One SHA-256 over ``{name: digest}`` (sorted by name; a missing weight counts as ``None``)."""
    h = hashlib.sha256()
    for name in sorted(digests):
        h.update(f"{name}={digests[name]}\n".encode())
    return h.hexdigest()


def weight_mismatches(expected: Mapping[str, str], held: Mapping[str, Optional[str]]) -> list[str]:
    """Names whose digest in ``held`` (what a replica holds, :meth:`HFServer.get_weight_digests`) is not the one in
    ``expected`` (the actor's, :func:`named_tensor_digests`); a name the replica has no weight for is a mismatch."""
    return sorted(name for name, digest in expected.items() if held.get(name) != digest)


def replica_weight_report(expected: Mapping[str, str], servers: Sequence[Any]) -> dict[str, Any]:
    """Whether every server (an :class:`HFServer` actor handle) holds the weights ``expected`` describes (the actor's
    :func:`named_tensor_digests`, cast to the server's dtype): ``{"match", "mismatched" (names, sorted),
    "actor_digest", "replica_digests" (one per server)}``. The trainer runs it after every weight sync."""
    held = ray.get([server.get_weight_digests.remote(list(expected)) for server in servers])
    mismatched = sorted({name for digests in held for name in weight_mismatches(expected, digests)})
    return {
        "match": not mismatched,
        "mismatched": mismatched,
        "actor_digest": combined_digest(expected),
        "replica_digests": [combined_digest(digests) for digests in held],
    }


__all__ = ["combined_digest", "named_tensor_digests", "replica_weight_report", "tensor_digest", "weight_mismatches"]
