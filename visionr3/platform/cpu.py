"""A CPU platform for verl 0.9.1, and the few CPU workarounds verl needs — all of them in this one module.

verl routes every device decision through ``verl.plugin.platform`` (``verl/utils/device.py`` delegates to the active
``PlatformBase``). 0.9.1 ships ``nvidia``, ``huawei`` and ``amd`` platforms and, on a machine with none of them,
falls back to ``nvidia``: ``get_device_name()`` says ``"cuda"`` and ``get_nccl_backend()`` says ``"nccl"``, and the
trainer dies in ``init_process_group`` ("Distributed package doesn't have NCCL built in"). :class:`PlatformCPU` is a
real platform registered through verl's own ``PlatformRegistry`` under the name ``"cpu"``:

=====================  ==================  =============================================================================
verl asks              CPU answer          why
=====================  ==================  =============================================================================
``device_name``        ``"cpu"``           tensors, meshes (``init_device_mesh("cpu", ...)``), autocast device type
``current_device()``   ``"cpu"``           verl moves data with ``.to(get_device_id())`` / ``torch.device(get_device_id())``;
                                           an *int* there means "accelerator #i" and raises "Cannot access accelerator
                                           device when none is available" (e.g. ``fsdp2_load_full_state_dict``)
``device_module``      :data:`DEVICE`      ``torch.cpu`` plus the ``torch.cuda``-style calls verl makes through
                                           ``get_torch_device()`` (``empty_cache``, ``mem_get_info``, memory stats, RNG)
comm. backend          ``"gloo"``          the only torch.distributed backend for CPU tensors
``ray_resource_name``  ``"GPU"``           see "Ray resources" below
=====================  ==================  =============================================================================

Selection (process-global, decided by verl on the first ``get_platform()`` call):

- ``VERL_PLATFORM=cpu`` selects it explicitly (verl's own override; any other value, e.g. ``nvidia``, wins over
  auto-detection as usual).
- Without ``VERL_PLATFORM`` verl probes the registered platforms in registration order — nvidia, huawei, amd, then
  this one, because plug-ins load after verl's built-ins — and takes the first that says it is available. Ours says
  so only on a host with **no accelerator at all** (:func:`accelerator_evidence` returns ``None``): ``torch.cuda``/
  ``torch.accelerator`` see nothing, ``torch_npu`` is not installed, no ``nvidia-smi``/``rocm-smi``/``npu-smi`` exists
  and no accelerator driver is loaded (``/proc/driver/nvidia``, ``/dev/nvidiactl``, ``/dev/kfd``, ``/dev/davinci*``).
  The driver and tool checks keep a GPU node from ever auto-selecting it — not even a CPU-only Ray actor there, where
  ``torch.cuda.is_available()`` is False. A CUDA *build* of torch is no evidence: the project's own venv runs one on
  CPU machines (it is the build with a loadable torchvision, which vLLM needs; docs/vllm-on-cpu.md). Such a host
  would otherwise get verl's ``nvidia`` fallback, which cannot work there, so CPU users need not export anything.

Workarounds, each inert unless this platform is the selected one:

1. **Duplicate gloo backend** (:func:`install_backend_dedupe`). ``verl/utils/distributed.py`` builds
   ``backend=f"cpu:gloo,{get_device_name()}:{get_nccl_backend()}"`` in both ``initialize_global_process_group`` (SFT /
   torchrun) and ``initialize_global_process_group_ray`` (every ``engine_workers`` worker). On CPU that is
   ``"cpu:gloo,cpu:gloo"``, which ``torch.distributed`` rejects ("Duplicate device type cpu"). No platform member can
   avoid it: the device half must be ``"cpu"`` and the string is assembled inline, then passed straight to
   ``torch.distributed.init_process_group`` (looked up as a module attribute at call time). So we wrap that one
   function: identical repeated ``device:backend`` pairs are collapsed (``"cpu:gloo,cpu:gloo"`` -> ``"cpu:gloo"``), a
   no-op for every other string, and conflicting pairs are left for torch to reject. The wrapper is installed lazily
   by :meth:`PlatformCPU.communication_backend_name` — i.e. exactly when verl is assembling that string with the CPU
   platform active — so no process on another platform ever sees it. Idempotent.
2. **No engine for device "cpu"** (:func:`register_cpu_engines`). ``EngineRegistry.get_engine_cls``
   (``verl/workers/engine/base.py``) looks engines up by ``(device, vendor)``; the FSDP engines are registered for
   ``device=["cuda", "npu"]`` only (``verl/workers/engine/fsdp/transformer_impl.py``). Instead of lying about the
   device (``VERL_ENGINE_DEVICE=cuda VERL_ENGINE_VENDOR=nvidia``), we register the same classes with verl's own
   ``EngineRegistry.register(model_type=..., backend="fsdp2", device="cpu")``. Backend ``"fsdp"`` (FSDP1, verl's
   default ``strategy``) gets a stand-in that raises an actionable error: verl wraps FSDP1 with
   ``sync_module_states=True``, which torch refuses for CPU modules. Registration has to wait until verl itself
   imports ``transformer_impl`` (importing it earlier would cost ~1 s in every process — TransferQueue and reward
   actors included — and would fix the platform choice at plug-in load time), so :func:`register` arms a one-shot
   post-import hook for that module when the CPU platform is requested; the hook re-checks that the CPU platform is
   the active one before registering.

3. **vLLM's CPU linear layers cannot take new weights** (:func:`keep_vllm_linear_weights`). vLLM's CPU build packs
   every unquantized linear weight for oneDNN after loading (``dispatch_cpu_unquantized_gemm``,
   ``vllm/model_executor/layers/utils.py``) and replaces ``layer.weight`` by an empty parameter without its
   ``weight_loader``; the embedding-tied ``lm_head`` keeps its weight but computes from a packed copy. verl's weight
   sync then calls ``model.load_weights`` on that model (``vLLMColocateWorkerExtension._update_weights``) and dies with
   ``'Parameter' object has no attribute 'weight_loader'`` — or, for the head, would silently generate from stale
   weights. With ``vllm._custom_ops._supports_onednn`` off, vLLM takes its own fallback (``F.linear`` on the live
   weight), so every synced weight is the one used. It is armed like (2), in processes that import verl with the CPU
   platform requested — which includes vLLM's workers, because verl's worker extension is imported before the model
   loads; a standalone ``vllm serve`` (no verl) keeps oneDNN.

4. **The reference model pins memory** (:func:`unpinned_offload_policy`). verl 0.9.1's FSDP2 engine gives every
   forward-only module (the reference policy, whenever a KL term is on) ``CPUOffloadPolicy(pin_memory=True)``
   whatever ``ref.fsdp_config.param_offload`` says (``_build_fsdp_module``), and pinning host memory needs a CUDA
   driver ("Found no NVIDIA driver on your system"). On CPU the parameters already live in host memory, so pinning
   buys nothing: the engine module's ``CPUOffloadPolicy`` name is rebound to a subclass that always says
   ``pin_memory=False``. Armed like (2), on the same module import; the class stays a ``CPUOffloadPolicy``, so
   FSDP2's and verl's ``isinstance`` checks are unchanged.

Ray resources: verl's resource pools reserve the platform's ``ray_resource_name()`` per worker
(``RayResourcePool.get_placement_groups`` in ``verl/single_controller/ray/base.py``) and
``ResourcePoolManager._check_resource_available`` counts only ``"GPU"``/``"NPU"``. We keep ``"GPU"`` and declare
*logical* GPUs to Ray (``ray_kwargs.ray_init.num_gpus=<workers per node>``): one logical GPU is one training process,
and Ray's placement logic works unchanged. Ray then sets ``CUDA_VISIBLE_DEVICES`` in those actors, which a CPU torch
ignores.

Not handled here, because they are configuration rather than platform questions (the trainer config must set them):
``attn_implementation=sdpa`` (verl's default is flash_attention_2; ``PlatformBase.apply_model_patches`` exists but
verl never calls it), ``fsdp_config.model_dtype=fp32``, ``ray_kwargs.ray_init.num_gpus``, ``trainer.device=cpu``
(``auto_set_device`` deliberately never rewrites it to ``"cpu"``), and the rollout (verl 0.9.1 generates only through
vLLM/SGLang/TRT-LLM servers).
"""

from __future__ import annotations

import functools
import glob
import importlib.util
import logging
import os
import platform as _host
import shutil
import types
from contextlib import contextmanager
from typing import Any, Optional

import torch
from verl.plugin.platform.platform_base import PlatformBase
from verl.plugin.platform.platform_manager import PlatformRegistry

from visionr3.platform import after_import

logger = logging.getLogger(__name__)

PLATFORM_NAME = "cpu"
"""Name under which the platform is registered, i.e. the value of ``VERL_PLATFORM`` that selects it."""

COMM_BACKEND = "gloo"

_ENGINE_MODULE = "verl.workers.engine.fsdp.transformer_impl"
# (model_type, class name in _ENGINE_MODULE) of the engines verl registers for cuda/npu that also run on CPU.
_CPU_ENGINES = (("language_model", "FSDPEngineWithLMHead"), ("value_model", "FSDPEngineWithValueHead"))
_SMI_COMMANDS = ("nvidia-smi", "rocm-smi", "npu-smi")
_DRIVER_PATHS = ("/proc/driver/nvidia", "/dev/nvidiactl", "/dev/kfd")
_SMI_DIRS = ("/usr/bin", "/usr/local/bin", "/usr/local/cuda/bin", "/opt/rocm/bin", "/usr/local/sbin")


# ---------------------------------------------------------------------------------------------------------------------
# Selection
# ---------------------------------------------------------------------------------------------------------------------


@functools.cache
def accelerator_evidence() -> Optional[str]:
    """Why this host may have an accelerator, or ``None`` when there is no sign of one (then CPU is auto-selected).

    Deliberately over-cautious: anything that hints at a GPU/NPU makes auto-detection decline, leaving verl's own
    platforms (or its ``nvidia`` fallback) in charge; ``VERL_PLATFORM=cpu`` still selects CPU explicitly.
    """
    if torch.cuda.is_available():
        return "torch.cuda.is_available() is True"
    accelerator = getattr(torch, "accelerator", None)
    if accelerator is not None and accelerator.is_available():
        return f"torch.accelerator sees {accelerator.current_accelerator()}"
    if importlib.util.find_spec("torch_npu") is not None:
        return "torch_npu is installed"
    for command in _SMI_COMMANDS:
        path = shutil.which(command) or next(
            (p for p in (os.path.join(d, command) for d in _SMI_DIRS) if os.access(p, os.X_OK)), None
        )
        if path:
            return f"{path} exists"
    for path in _DRIVER_PATHS:
        if os.path.exists(path):
            return f"{path} exists (an accelerator driver is loaded)"
    if glob.glob("/dev/davinci[0-9]*"):
        return "/dev/davinci* exists (an Ascend driver is loaded)"
    return None


def cpu_platform_requested() -> bool:
    """Whether verl will select this platform in this process: ``VERL_PLATFORM=cpu``, or no ``VERL_PLATFORM`` and no
    accelerator evidence (the same decision ``verl.plugin.platform.platform_manager._detect_platform_name`` makes,
    given that the built-in platforms all decline on such a host)."""
    requested = os.environ.get("VERL_PLATFORM", "").strip().lower()
    if requested:
        return requested == PLATFORM_NAME
    return accelerator_evidence() is None


def cpu_platform_active() -> bool:
    """Whether verl's platform singleton is this CPU platform (decides it now if verl has not yet)."""
    from verl.plugin.platform import get_platform

    return isinstance(get_platform(), PlatformCPU)


# ---------------------------------------------------------------------------------------------------------------------
# The device module: what ``verl.utils.device.get_torch_device()`` returns
# ---------------------------------------------------------------------------------------------------------------------


def _host_memory() -> tuple[int, int]:
    """(available, total) bytes of host memory — the CPU's "device memory"."""
    try:
        page = os.sysconf("SC_PAGE_SIZE")
        return os.sysconf("SC_AVPHYS_PAGES") * page, os.sysconf("SC_PHYS_PAGES") * page
    except (ValueError, OSError, AttributeError):  # non-POSIX hosts
        return 0, 0


def _zero(*args: Any, **kwargs: Any) -> int:
    return 0


def _noop(*args: Any, **kwargs: Any) -> None:
    return None


class _CPUDeviceModule(types.ModuleType):
    """``torch.cpu`` extended with the ``torch.cuda``-style functions verl calls on ``get_torch_device()``.

    ``torch.cpu`` already has ``is_available``, ``current_device`` (``"cpu"``), ``device_count``, ``set_device``,
    ``synchronize``, ``Stream``, ``Event``, ``stream``, ``current_stream``; anything not defined here is looked up
    there. Added: the caching-allocator API (``empty_cache`` and the memory counters — CPU tensors are not cached,
    so the counters are 0), ``mem_get_info``/``get_device_properties`` (host RAM), and RNG state (the CPU generator).
    """

    def __getattr__(self, name: str) -> Any:
        return getattr(torch.cpu, name)


def _device_properties(device: Any = None) -> types.SimpleNamespace:
    return types.SimpleNamespace(name=f"cpu ({_host.machine() or 'unknown'})", total_memory=_host_memory()[1])


DEVICE = _CPUDeviceModule("visionr3.platform.cpu.DEVICE")
DEVICE.__dict__.update(
    is_available=lambda: True,
    is_initialized=lambda: True,
    current_device=lambda: "cpu",
    device_count=lambda: 1,
    set_device=_noop,
    synchronize=_noop,
    manual_seed=lambda seed: torch.manual_seed(seed),
    manual_seed_all=lambda seed: torch.manual_seed(seed),
    get_rng_state=lambda device="cpu": torch.get_rng_state(),
    set_rng_state=lambda state, device="cpu": torch.set_rng_state(state),
    empty_cache=_noop,
    ipc_collect=_noop,
    set_per_process_memory_fraction=_noop,
    memory_allocated=_zero,
    memory_reserved=_zero,
    max_memory_allocated=_zero,
    max_memory_reserved=_zero,
    reset_peak_memory_stats=_noop,
    reset_accumulated_memory_stats=_noop,
    mem_get_info=lambda device=None: _host_memory(),
    get_device_properties=_device_properties,
    get_device_name=lambda device=None: _device_properties().name,
)


# ---------------------------------------------------------------------------------------------------------------------
# The platform
# ---------------------------------------------------------------------------------------------------------------------


class PlatformCPU(PlatformBase):
    """verl platform for hosts without an accelerator: device ``cpu``, gloo, logical Ray ``GPU``s (module docstring)."""

    @property
    def device_name(self) -> str:
        return "cpu"

    @property
    def vendor_name(self) -> str:
        return "cpu"

    @property
    def device_module(self) -> types.ModuleType:
        return DEVICE

    def is_available(self) -> bool:
        return True  # the host is always there; verl warns at selection time if this is False

    def is_platform_available(self, use_smi_check: bool = False) -> bool:
        # Called by verl's auto-detection only after nvidia/huawei/amd declined; see the module docstring.
        evidence = accelerator_evidence()
        if evidence is not None:
            logger.debug("CPU platform not auto-selected: %s", evidence)
        return evidence is None

    def current_device(self) -> str:  # type: ignore[override]  (PlatformBase says int; see the module docstring)
        return "cpu"

    def device_count(self) -> int:
        return 1

    def set_device(self, device_index: int) -> None:
        pass

    def synchronize(self, device_index: Optional[int] = None) -> None:
        pass  # CPU ops are synchronous

    def manual_seed(self, seed: int) -> None:
        torch.manual_seed(seed)  # the CPU generator is the device generator

    def manual_seed_all(self, seed: int) -> None:
        torch.manual_seed(seed)

    def set_allocator_settings(self, settings: str) -> None:
        pass  # e.g. "expandable_segments:True" is a CUDA caching-allocator setting

    def empty_cache(self) -> None:
        pass  # no caching allocator on CPU

    def get_device_capability(self, device_index: int = 0) -> tuple[Optional[int], Optional[int]]:
        return None, None

    def communication_backend_name(self) -> str:
        # verl calls this (get_nccl_backend) right before init_process_group: install workaround 1 now, in this
        # process only, and only because the CPU platform is the active one.
        install_backend_dedupe()
        return COMM_BACKEND

    def visible_devices_envvar(self) -> str:
        # Ray sets CUDA_VISIBLE_DEVICES for actors holding (logical) "GPU"s; verl's Worker records it. CPU torch
        # ignores it.
        return "CUDA_VISIBLE_DEVICES"

    @contextmanager
    def nvtx_range(self, msg: str):
        yield

    def profiler_start(self) -> None:
        pass

    def profiler_stop(self) -> None:
        pass

    def ray_resource_name(self) -> str:
        return "GPU"  # logical GPUs declared with ray.init(num_gpus=N); see the module docstring

    def ray_noset_envvars(self) -> list[str]:
        return []

    def is_ipc_supported(self) -> bool:
        return False  # no CUDA/NPU IPC handles between processes

    def cudart(self) -> Any:
        return None


# ---------------------------------------------------------------------------------------------------------------------
# Workaround 1: "cpu:gloo,cpu:gloo"
# ---------------------------------------------------------------------------------------------------------------------


def dedupe_backend(backend: Any) -> Any:
    """Collapse identical repeated ``device:backend`` pairs: ``"cpu:gloo,cpu:gloo"`` -> ``"cpu:gloo"``.

    Anything else is returned unchanged (non-strings, single backends, distinct or conflicting pairs)."""
    if not isinstance(backend, str) or "," not in backend:
        return backend
    pairs = [pair.strip() for pair in backend.split(",")]
    unique = list(dict.fromkeys(pairs))
    return backend if len(unique) == len(pairs) else ",".join(unique)


def install_backend_dedupe() -> None:
    """Wrap ``torch.distributed.init_process_group`` with :func:`dedupe_backend` (workaround 1). Idempotent."""
    import torch.distributed as dist

    original = dist.init_process_group
    if getattr(original, "__visionr3_dedupe__", False):
        return

    @functools.wraps(original)
    def init_process_group(*args: Any, **kwargs: Any) -> Any:
        if args:
            args = (dedupe_backend(args[0]), *args[1:])
        elif "backend" in kwargs:
            kwargs["backend"] = dedupe_backend(kwargs["backend"])
        return original(*args, **kwargs)

    init_process_group.__visionr3_dedupe__ = True  # type: ignore[attr-defined]
    dist.init_process_group = init_process_group
    logger.debug("visionr3 CPU platform: torch.distributed.init_process_group de-duplicates backend strings")


# ---------------------------------------------------------------------------------------------------------------------
# Workaround 2: FSDP engines for device "cpu"
# ---------------------------------------------------------------------------------------------------------------------


FSDP1_ON_CPU_ERROR = (
    "strategy 'fsdp' (FSDP1) cannot run on the CPU platform: verl wraps FSDP1 modules with sync_module_states=True, "
    "which torch only allows for modules on an accelerator. Use strategy=fsdp2 on CPU "
    "(actor_rollout_ref.actor.strategy=fsdp2 actor_rollout_ref.ref.strategy=fsdp2, and critic.strategy=fsdp2)."
)


def _fsdp1_unsupported_engine() -> type:
    from verl.workers.engine.base import BaseEngine

    class FSDP1UnsupportedOnCPU(BaseEngine):
        """Registered for backend "fsdp" on CPU so that choosing FSDP1 fails with a clear message at engine creation,
        instead of torch's "module has CPU parameters ... sync_module_states=True" deep inside model building."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            raise ValueError(FSDP1_ON_CPU_ERROR)

    return FSDP1UnsupportedOnCPU


def register_cpu_engines(module: Optional[types.ModuleType] = None) -> list[tuple[str, str]]:
    """Register verl's FSDP2 engines for ``device="cpu"`` with ``EngineRegistry`` (workaround 2). Idempotent.

    Backend ``fsdp2`` gets the real engine classes. Backend ``fsdp`` (FSDP1, verl's default strategy) gets a class
    that raises :data:`FSDP1_ON_CPU_ERROR`: the same engine class would build FSDP1 from ``strategy="fsdp"``, and
    FSDP1 cannot hold CPU modules the way verl configures it. Does nothing unless the CPU platform is the active one.
    Returns the ``(model_type, backend)`` pairs it added.
    """
    if not cpu_platform_active():
        return []
    import importlib

    from verl.workers.engine.base import EngineRegistry

    module = module or importlib.import_module(_ENGINE_MODULE)
    fsdp1_unsupported = None
    added = []
    for model_type, class_name in _CPU_ENGINES:
        engine_cls = getattr(module, class_name, None)
        if engine_cls is None:
            continue
        for backend in ("fsdp2", "fsdp"):
            if PLATFORM_NAME in EngineRegistry._engines.get(model_type, {}).get(backend, {}):
                continue  # verl asserts on re-registration, so check first (idempotency)
            if backend == "fsdp":
                fsdp1_unsupported = fsdp1_unsupported or _fsdp1_unsupported_engine()
            cls = engine_cls if backend == "fsdp2" else fsdp1_unsupported
            EngineRegistry.register(model_type=model_type, backend=backend, device=PLATFORM_NAME)(cls)
            added.append((model_type, backend))
    return added


# ---------------------------------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------------------------------


def register() -> bool:
    """Register :class:`PlatformCPU` as verl platform ``"cpu"`` and, if this process will select it, arm the engine
    registration hook. Cheap (no imports beyond what verl has loaded) and idempotent. Returns whether the CPU platform
    is requested in this process."""
    if PlatformRegistry.get(PLATFORM_NAME) is not PlatformCPU:
        PlatformRegistry.register(platform=PLATFORM_NAME)(PlatformCPU)
    requested = cpu_platform_requested()
    global _engine_hook_armed
    if requested and not _engine_hook_armed:
        _engine_hook_armed = True
        after_import(_ENGINE_MODULE, register_cpu_engines)
        after_import(_ENGINE_MODULE, unpinned_offload_policy)
        after_import("vllm._custom_ops", keep_vllm_linear_weights)
    return requested


def unpinned_offload_policy(engine_module: types.ModuleType) -> None:
    """Workaround (4) of the module docstring: FSDP2 offload policies built by verl's engine never pin memory on CPU."""
    policy = getattr(engine_module, "CPUOffloadPolicy", None)
    if not cpu_platform_active() or policy is None or getattr(policy, "_visionr3_unpinned", False):
        return

    class UnpinnedCPUOffloadPolicy(policy):
        _visionr3_unpinned = True

        def __init__(self, pin_memory: bool = False):
            super().__init__(pin_memory=False)

    UnpinnedCPUOffloadPolicy.__name__ = UnpinnedCPUOffloadPolicy.__qualname__ = "CPUOffloadPolicy"
    engine_module.CPUOffloadPolicy = UnpinnedCPUOffloadPolicy


def keep_vllm_linear_weights(custom_ops: types.ModuleType) -> None:
    """Workaround (3) of the module docstring: vLLM's CPU linear layers keep their weights, so verl can sync them."""
    if getattr(custom_ops, "_supports_onednn", False):
        custom_ops._supports_onednn = False
        logger.info("visionr3: vLLM's oneDNN weight packing is off (CPU platform): synced weights take effect")


_engine_hook_armed = False
