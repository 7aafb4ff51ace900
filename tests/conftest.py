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
