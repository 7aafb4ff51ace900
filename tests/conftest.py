"""Shared fixtures. Tests are offline and CPU-only by default; `slow`/`network` tests opt in with `-m`.

The tiny checkpoints are built once per machine and cached (see visionr3.testing.tiny_model.tiny_model_dir), so only
the first run pays the ~10 s build per architecture.
"""

import os

# Never reach for a model hub: every model in the tests is built locally.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import pytest  # noqa: E402

ARCHS = ("qwen2_5_vl", "qwen3_vl")


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


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
