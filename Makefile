# visionr3 developer entry points. `make demo` and `make test` are README's two quickstart commands; both create or
# refresh the project's virtualenv (.venv) first, so they work on a fresh machine with only Python 3.10-3.12.
#
# Why a Makefile: torch must be installed *before* anything that depends on it (pinned to 2.13.0, whose local CPU
# wheel sorts above PyPI's CUDA build), or pip resolves verl's dependencies against a multi-GB CUDA torch.
# The venv is rebuilt only when pyproject.toml or constraints.txt change (the stamp file records that).

PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PIP := $(VENV)/bin/python -m pip
STAMP := $(VENV)/.visionr3-installed
PYTEST_ARGS ?=

.PHONY: venv demo test clean-venv browser

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet "$(TORCH_SPEC)"
	$(PIP) install --quiet -c constraints.txt -e ".[dev]"
	@# lmms-eval (the `--model visionr3` plug-in, visionr3/eval/lmms.py) without its declared dependencies: they
	@# include torchvision, which has no CPU build that fits torch 2.13 and would replace it, and ~40 packages its
	@# core never imports. The first line is what its CLI, task loader and result writer do import. (`pip check`
	@# lists lmms-eval's other requirements as missing: expected.)
	$(PIP) install --quiet -c constraints.txt loguru sacrebleu evaluate pytz tenacity pytablewriter
	$(PIP) install --quiet --no-deps lmms-eval==0.7.3
	@# torchcodec (pulled by verl-core) is CUDA-linked and only decodes video/audio; on a CPU-only machine it
	@# breaks imports that probe it (libnvrtc missing). See NOTE.md "CPU image-processing path".
	@if ! $(VENV)/bin/python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then \
		$(PIP) uninstall --quiet --yes torchcodec 2>/dev/null || true; fi
	@# Where torchvision cannot load, every process needs visionr3.processing.prepare_runtime() before building a
	@# Qwen-VL processor; this writes a .pth hook that runs it right after `import transformers` (no-op on GPU).
	$(VENV)/bin/python -c "from visionr3.transformers_hook import write_pth_file; print(write_pth_file())"
	$(VENV)/bin/python -c "import visionr3, verl; print('visionr3', visionr3.__version__, 'on verl', verl.__version__)"
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
