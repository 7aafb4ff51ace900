# visionr3 developer entry points. `make demo` and `make test` are README's two quickstart commands; both create or
# refresh the project's virtualenv (.venv) first, so they work on a fresh machine with only Python 3.10-3.12.
#
# Why a Makefile: torch must be installed *before* anything that depends on it (pinned to 2.13.0, whose local CPU
# wheel sorts above PyPI's CUDA build), or the resolver resolves verl's dependencies against a multi-GB CUDA torch.
# The venv is rebuilt only when pyproject.toml, constraints.txt or requirements.lock change (the stamp file records
# that). Every install is constrained by requirements.lock, the full resolved set CI was green with, and the stamp is
# written only when the venv holds exactly that set (tools/venv_lock.py): an upstream release can no longer change a
# fresh machine's environment. `make lock` refreshes the lock from constraints.txt (the direct pins people edit).
# Installs go through uv (pinned in the lock, bootstrapped with the venv's pip): a cold `make venv` takes ~20 s
# instead of pip's ~100 s. uv ignores pip's configuration, so pip's find-links (where a local torch wheel lives)
# are passed on.

PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PIP := $(VENV)/bin/python -m pip
STAMP := $(VENV)/.visionr3-installed
LOCK ?= requirements.lock
FIND_LINKS ?= $(shell $(PYTHON) -m pip config get global.find-links 2>/dev/null)
UV_VERSION := $(shell sed -n 's/^uv==//p' constraints.txt)
UV := $(VENV)/bin/uv pip install --quiet --python $(VENV)/bin/python $(if $(FIND_LINKS),--find-links $(FIND_LINKS)) -c $(LOCK) -c constraints.txt
PYTEST_ARGS ?=

.PHONY: venv demo test clean-venv browser lock

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt $(LOCK)
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet "uv==$(UV_VERSION)"
	$(UV) "$(TORCH_SPEC)"
	$(UV) -e ".[dev]"
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
