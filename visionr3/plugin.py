"""visionr3's verl plug-in: the module verl imports in **every** process — driver, TaskRunner, Ray workers.

How it gets loaded: ``verl/__init__.py`` imports the modules listed in ``VERL_USE_EXTERNAL_MODULES`` and then loads
every entry point of the ``verl.plugins`` group (``VERL_USE_EXTERNAL_PLUGINS``: ``auto`` by default, ``none`` to
disable, or a comma-separated list of entry-point names). visionr3 declares::

    [project.entry-points."verl.plugins"]
    visionr3 = "visionr3.plugin"

so an installed visionr3 needs no environment variable; ``VERL_USE_EXTERNAL_MODULES=visionr3.plugin`` does the same
for a source checkout (importing twice is harmless). Note that verl swallows exceptions raised by entry points (it
logs them at DEBUG), which is one more reason this module does as little as possible at import time.

This runs while ``verl/__init__`` is still executing (after ``verl.protocol`` and ``verl.utils.device`` — and with them
torch, ray, omegaconf and transformers — have been imported). So it must not import verl modules that need a complete
``verl`` package, and it must not call ``verl.plugin.platform.get_platform()``: that would fix the platform before
``VERL_PLATFORM``/auto-detection could consider ours. What it does, in order:

1. **CPU platform** — registers :class:`visionr3.platform.cpu.PlatformCPU` as verl platform ``"cpu"`` (selected by
   ``VERL_PLATFORM=cpu``, or automatically on a host without any accelerator) and, only if this process will select
   it, arms the hook that registers the FSDP2 engines for device ``"cpu"``. Imports nothing new. Every CPU
   workaround, and why it is needed, is documented in :mod:`visionr3.platform.cpu`.
2. **Qwen-VL processors without torchvision** — :func:`visionr3.processing.prepare_runtime`, through
   :func:`visionr3.platform.transformers_hook.install` (immediately, since verl has imported transformers; right after
   transformers is imported otherwise). A no-op where torchvision works; ~0.3 s where it installs its stand-ins.
3. **OmegaConf resolvers** — :func:`visionr3.config.register_resolvers` (``${visionr3.config:...}``,
   ``${visionr3.template:...}``), needed wherever a config is resolved. Cheap. With them, once hydra is imported
   (not before: it costs ~0.2 s), :func:`visionr3.config.register_config_nodes`, the config node that lets a
   ``visionr3.reward.params`` override merge new keys, needed wherever a visionr3 config is composed
   (``python -m verl.trainer.main_ppo`` included).
4. **Registrations with verl's registries** — deferred, by :data:`DEFERRED_IMPORTS`, to the moment verl imports the
   package that holds the registry (after that package's ``__init__`` has finished, so there is no import cycle).
   Processes that never use a registry (TransferQueue storage actors, reward workers, ...) pay nothing, and the
   registration still precedes every lookup, since a lookup needs that package imported first:

   - ``verl.experimental.agent_loop`` -> ``visionr3.agent.parsers`` (``ToolParser`` names ``visionr3_hermes``,
     ``bbox_json``), so stock ``ToolAgentLoop`` with ``multi_turn.format=visionr3_hermes`` works in every agent-loop
     worker. (Importing it eagerly here works too — no import cycle, checked — but costs ~1 s per process, as it
     pulls in verl's whole agent-loop package.)
   - ``verl.workers.rollout`` -> ``visionr3.rollout.hf.registry`` (rollout ``"hf"``: the replica, used by the
     TaskRunner, and the weight-sync adapter, used by every trainer worker).
   - ``verl.trainer.ppo.v1`` -> ``visionr3.train.trainer`` (``trainer.v1.trainer_mode=visionr3_sync``).
   - ``verl.workers.rollout.vllm_rollout.utils`` -> ``visionr3.rollout.vllm_weights`` (the weight-fingerprint method
     on verl's vLLM worker extension, which vLLM's workers import).

   Add new registrations there. Agent loops named by ``_target_`` in an agent-loop config file need nothing: verl
   imports them by path.
"""

from __future__ import annotations

import importlib

from visionr3.platform import after_import
from visionr3.platform import cpu as _cpu

DEFERRED_IMPORTS: dict[str, tuple[str, ...]] = {
    # verl package (imported completely first) -> visionr3 modules that register themselves with it on import
    "verl.experimental.agent_loop": ("visionr3.agent.parsers",),
    "verl.workers.rollout": ("visionr3.rollout.hf.registry",),
    "verl.trainer.ppo.v1": ("visionr3.train.trainer",),
    "verl.workers.rollout.vllm_rollout.utils": ("visionr3.rollout.vllm_weights",),
}


def _importer(modules: tuple[str, ...]):
    def run(_verl_package) -> None:
        for name in modules:
            importlib.import_module(name)

    return run


def load() -> None:
    """Everything the plug-in does; runs once, when this module is first imported."""
    _cpu.register()

    from visionr3.platform.transformers_hook import install as prepare_processing_runtime

    prepare_processing_runtime()

    from visionr3.config import register_config_nodes, register_resolvers

    register_resolvers()
    after_import("hydra", lambda _hydra: register_config_nodes())

    for verl_package, ours in DEFERRED_IMPORTS.items():
        after_import(verl_package, _importer(ours))

    from visionr3.platform import verl_fixes

    after_import("verl.utils.tensordict_utils", verl_fixes.install)
    after_import("verl.models.transformers.qwen2_vl", verl_fixes.install_text_only_fix)
    after_import("verl.workers.engine_workers", verl_fixes.install_freeze_vision_tower)
    after_import("verl.workers.engine.fsdp.transformer_impl", verl_fixes.install_freeze_vision_tower)
    after_import("verl.trainer.ppo.v1.replay_buffer", verl_fixes.install_poll_interval)


load()
