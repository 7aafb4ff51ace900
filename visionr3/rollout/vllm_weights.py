"""Does verl's vLLM engine hold the actor's weights? A fingerprint both sides can compute, and how to read vLLM's.

The HF replica answers this with per-tensor SHA-256 digests (:mod:`visionr3.rollout.hf.digests`), because it holds
the actor's tensors under the actor's names. vLLM does not: it fuses q/k/v and gate/up projections, reshapes the
vision patch embedding and renames modules as it loads (``hf_to_vllm_mapper``), so no tensor or name is comparable.
What survives every fusion, reshape and rename is arithmetic over all elements: :func:`weight_fingerprint` is the
element count, sum and sum of squares of every parameter, accumulated in float64. A stale engine is caught because an
optimiser step moves every weight: one Adam step of lr 1e-4 on the small model changes the sum of squares by ~1e-3
relative, six orders above the float64 rounding of the sums (:data:`RTOL`).

Reading the engine's side goes through verl's own server and vLLM's own RPC. vLLM runs a worker method named by a
string in every worker (``engine.collective_rpc``); a function cannot travel to its engine process (msgspec refuses
it, and a pickled one is pickled again by the executor), so :func:`register_worker_method` adds
``visionr3_weight_fingerprint`` to verl's worker extension class — the class vLLM mixes into its workers — when verl
imports it (the plug-in's deferred imports, in vLLM's worker processes too). ``vLLMHttpServer.collective_rpc`` drops
results, so :func:`vllm_server_fingerprints` schedules ``engine.collective_rpc`` inside the server actor
(``__ray_call__``) and polls it for the return value. Nothing of verl's is copied or replaced. The trainer's check (:func:`visionr3.train.trainer.weight_sync_metrics`) uses
this for ``rollout.name=vllm`` and the digests for ``hf``.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

RTOL = 1e-7
"""Relative tolerance on the sums: float64 accumulation of float32 values in different orders (fused vs separate
tensors) differs in the ~15th digit; an optimiser step differs in the ~3rd."""

_TASK_ATTR = "_visionr3_fingerprint_task"


def weight_fingerprint(named_tensors: Iterable[tuple[str, Any]], skip: Sequence[str] = ()) -> dict[str, float]:
    """``{"numel", "sum", "sumsq"}`` over the floating tensors of ``named_tensors`` (a DTensor is gathered: on a
    sharded actor every rank must iterate), skipping names that end with any of ``skip``. float64 accumulation."""
    import torch

    numel, total, squares = 0, 0.0, 0.0
    for name, tensor in named_tensors:
        if any(name.endswith(suffix) for suffix in skip):
            continue
        tensor = tensor.detach()
        if hasattr(tensor, "full_tensor"):
            tensor = tensor.full_tensor()
        if not tensor.is_floating_point() or tensor.numel() == 0:
            continue
        values = tensor.to("cpu", torch.float64)
        numel += values.numel()
        total += float(values.sum())
        squares += float((values * values).sum())
    return {"numel": float(numel), "sum": total, "sumsq": squares}


def fingerprints_agree(a: Mapping[str, float], b: Mapping[str, float], rtol: float = RTOL) -> bool:
    """Same element count, and sums within ``rtol`` (relative to the sum of squares, which is never ~0)."""
    if a["numel"] != b["numel"]:
        return False
    scale = max(abs(a["sumsq"]), abs(b["sumsq"]), 1e-30)
    return abs(a["sum"] - b["sum"]) <= rtol * scale and abs(a["sumsq"] - b["sumsq"]) <= rtol * scale


def worker_fingerprint(worker: Any) -> dict[str, float]:
    """Runs inside a vLLM worker process (``collective_rpc``): the fingerprint of the model it generates with.
    ``named_parameters`` yields a tied parameter once (the ``lm_head`` that is the embedding)."""
    return weight_fingerprint(worker.model_runner.model.named_parameters())


WORKER_METHOD = "visionr3_weight_fingerprint"
_EXTENSION_MODULE = "verl.workers.rollout.vllm_rollout.utils"


def _add_worker_method(utils: Any) -> None:
    def visionr3_weight_fingerprint(self) -> dict[str, float]:
        return worker_fingerprint(self)

    setattr(utils.vLLMColocateWorkerExtension, WORKER_METHOD, visionr3_weight_fingerprint)


def register_worker_method() -> None:
    """Give verl's vLLM worker extension the fingerprint method, once verl imports it (now, if it has). Idempotent."""
    from visionr3.platform import after_import

    after_import(_EXTENSION_MODULE, _add_worker_method)


def _start(server: Any) -> None:
    """Runs in verl's ``vLLMHttpServer`` actor: schedule the engine-wide collective RPC on the engine's event loop.
    Ray runs a synchronous call of an async actor (``__ray_call__``) outside that loop, so the loop is taken from the
    engine's own output-handler task and the coroutine handed to it thread-safely."""
    import asyncio

    coroutine = server.engine.collective_rpc(WORKER_METHOD)
    try:
        future = asyncio.get_running_loop().create_task(coroutine)  # called on the loop itself (another Ray version)
    except RuntimeError:
        future = asyncio.run_coroutine_threadsafe(coroutine, server.engine.output_handler.get_loop())
    setattr(server, _TASK_ATTR, future)


def _poll(server: Any) -> Any:
    """``None`` while the RPC runs; then its result (one fingerprint per vLLM worker), or the error it raised."""
    future = getattr(server, _TASK_ATTR, None)
    if future is None or not future.done():
        return None
    setattr(server, _TASK_ATTR, None)
    error = future.exception()
    return {"error": f"{type(error).__name__}: {error}"} if error else {"result": future.result()}


def vllm_server_fingerprints(servers: Sequence[Any], timeout_s: float = 300.0) -> list[list[dict[str, float]]]:
    """The fingerprints of every worker behind each ``vLLMHttpServer`` actor handle in ``servers``."""
    import ray

    ray.get([server.__ray_call__.remote(_start) for server in servers])
    results: list[Any] = [None] * len(servers)
    deadline = time.monotonic() + timeout_s
    while any(r is None for r in results):
        if time.monotonic() > deadline:
            raise TimeoutError(f"vLLM weight fingerprint: no answer from the engine within {timeout_s:.0f} s")
        time.sleep(0.05)
        for i, server in enumerate(servers):
            if results[i] is None:
                results[i] = ray.get(server.__ray_call__.remote(_poll))
    errors = [r["error"] for r in results if "error" in r]
    if errors:
        raise RuntimeError(f"vLLM weight fingerprint failed in the engine: {errors[0]}")
    return [r["result"] for r in results]


register_worker_method()

__all__ = [
    "RTOL", "fingerprints_agree", "register_worker_method", "vllm_server_fingerprints", "weight_fingerprint",
    "worker_fingerprint",
]
