"""Shared fixtures. Tests are offline and CPU-only by default; `slow`/`network` tests opt in with `-m`.

The tiny checkpoints are built once per machine and cached (see visionr3.testing.tiny_model.tiny_model_dir), so only
the first run pays the ~10 s build per architecture.

Under ``CI=true`` a skip decided at run time is a failure — ``importorskip`` (at module level too), a ``pytest.skip``
because `ray start` or chromium is missing: `make test` installs everything the suite needs, so such a skip can only
hide a missing component. Skips declared by a ``skip``/``skipif`` mark (a ``gpu`` test without CUDA, a test for
another platform) stay skips: their condition is in the code, not in the machine's luck.
"""

import contextlib
import os

# OpenMP's idle threads spin by default: with the e2e trainers, their Ray workers and the unit tests sharing 2 cores,
# spinning threads steal each other's cycles (5x slower side by side; see configs/cluster/cpu.yaml). Set before
# anything loads torch's OpenMP runtime, which reads it once; every subprocess and Ray worker inherits it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# Never reach for a model hub: every model in the tests is built locally.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
# `datasets` caches every parquet verl loads (and its prompt filter's output) by fingerprint; a session starts with an
# empty cache of its own, so no test reads what an earlier session (or another checkout) left there. The trainers and
# CLIs the tests start inherit it.
_SESSION_DATASETS_CACHE = None
if "HF_DATASETS_CACHE" not in os.environ:
    import tempfile

    _SESSION_DATASETS_CACHE = os.environ["HF_DATASETS_CACHE"] = tempfile.mkdtemp(prefix="visionr3-hf-datasets-")

import pytest  # noqa: E402

ARCHS = ("qwen2_5_vl", "qwen3_vl")


def pytest_unconfigure(config):
    if _SESSION_DATASETS_CACHE is not None:
        import shutil

        shutil.rmtree(_SESSION_DATASETS_CACHE, ignore_errors=True)


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


CI = os.environ.get("CI", "").lower() == "true"


def _fail_the_skip(report, where: str) -> None:
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    report.outcome = "failed"
    report.longrepr = f"{where} skipped under CI=true, where nothing required may be missing: {reason}"


def _skipped_by_a_mark(item, report) -> bool:
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else ""
    declared = {m.kwargs.get("reason", m.args[0] if m.name == "skip" and m.args else "") for m in item.iter_markers()
                if m.name in ("skip", "skipif")}
    return any(r and reason.endswith(r) for r in declared)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if CI and report.skipped and not hasattr(report, "wasxfail") and not _skipped_by_a_mark(item, report):
        _fail_the_skip(report, item.nodeid)


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    report = outcome.get_result()
    if CI and report.skipped:
        _fail_the_skip(report, str(collector.nodeid))


@pytest.fixture(scope="session")
def tiny_model_dirs():
    """{arch: path} of the cached tiny checkpoints (built on first use)."""
    from visionr3.testing.tiny_model import tiny_model_dir

    return {arch: tiny_model_dir(arch) for arch in ARCHS}


@pytest.fixture(scope="session", params=ARCHS)
def arch(request):
    return request.param


@pytest.fixture(scope="session")
def model_dir(tiny_model_dirs, arch):
    return tiny_model_dirs[arch]


@pytest.fixture(scope="session")
def processor(model_dir):
    from visionr3.processing import load_processor

    return load_processor(model_dir)


@pytest.fixture(scope="session")
def ray_cluster():
    """The one local Ray of the test session, started on first use (or the cluster this process already joined).

    Its resources are logical and over-declared on purpose — 8 CPUs and 2 GPUs whatever the box has: Ray schedules by
    these numbers only. Test actors reserve ``num_cpus=0`` (two actors reserving a CPU each starve a 2-core Ray), and
    verl's resource pools reserve one ``"GPU"`` per bundle (on CPU a device is a logical GPU; see
    ``visionr3.platform.cpu``): two let a reward model's own pool sit beside the trainer's ``global_pool``.
    """
    import shutil
    import tempfile

    ray = pytest.importorskip("ray")
    if ray.is_initialized():
        yield ray
        return
    temp_dir = tempfile.mkdtemp(prefix="vr3ray", dir="/tmp")  # short: Ray's socket paths must stay < 108 characters
    ray.init(
        num_cpus=8, num_gpus=2, include_dashboard=False, namespace="visionr3-tests", _temp_dir=temp_dir,
        log_to_driver=False,
    )
    try:
        yield ray
    finally:
        ray.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def pool_slot(request):
    """One of the e2e pool's two slots for the module (tests/e2e/conftest.py, ``Pool.hold``): a test that starts vLLM
    (4-6 GB) or several Ray workers of its own waits until at most one e2e trainer runs, and no other starts beside
    it. Nothing to wait for without the pool."""
    pool = getattr(request.config, "visionr3_e2e_pool", None)
    with pool.hold() if pool is not None else contextlib.nullcontext():
        yield


@pytest.fixture(scope="module")
def vllm_server(vllm_model, pool_slot):
    """``vllm serve`` of the module's ``vllm_model`` fixture (a checkpoint path), one per test module, on loopback.

    Start-up takes minutes on 2 cores, and a server holds GiBs: modules share nothing, so at most one runs at a time.
    A server that cannot start raises (:class:`visionr3.testing.vllm_server.VLLMServerError`, with its log's tail):
    the tests error, they never skip."""
    from visionr3.testing.vllm_server import VLLMServer, rss_mb

    with VLLMServer(vllm_model) as server:
        print(f"vllm serve: healthy after {server.start_seconds:.0f} s, {rss_mb(server.pids()):.0f} MiB RSS in {len(server.pids())} processes")
        yield server
