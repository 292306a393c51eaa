# Quick start: `make demo` and `make test`. Both create .venv and install what is missing.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# The CPU build of PyTorch (a plain `torch` pulls a multi-GB CUDA build onto a CPU machine).
# On a GPU host: make TORCH_SPEC='torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128'
TORCH_SPEC ?= torch==2.13.0
# `dev` = export,onnxruntime,openvino,safetensors,parquet,plot,triton,ray,test (pyproject.toml). On a GPU host
# take the GPU build of ONNX Runtime instead of `onnxruntime` (never both: they share one module), e.g.
#   make EXTRAS=export,onnxruntime-gpu,tensorrt-cu12,openvino,safetensors,parquet,plot,triton,ray,test
# on a fresh .venv (pip does not remove an `onnxruntime` that is already there).
EXTRAS ?= dev
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: setup demo test test-fast gpu-check bench clean

setup: $(STAMP)

# nvidia-pytriton is installed for its tritonserver binary only (--no-deps: its numpy<2 pin would
# break pyarrow); the Triton Python-backend stub is built against NumPy 1.x, so it gets its own
# NumPy 1.x directory, which triton-serve puts first on the stub's path.
$(STAMP): pyproject.toml Makefile
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH_SPEC)
	$(BIN)/python -m pip install -q -e '.[$(EXTRAS)]'
	$(BIN)/python -m pip install -q --no-deps --no-warn-conflicts 'nvidia-pytriton>=0.7'
	$(BIN)/python -m pip install -q --upgrade --no-warn-conflicts --target $(VENV)/triton-stub-site 'numpy<2'
	@touch $@

demo: $(STAMP)
	$(BIN)/resnet-export --variant 50 --fp16
	@echo "artifacts: $(CURDIR)/exports/resnet50/ (manifest.json lists them)"

test: $(STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

gpu-check: $(STAMP)
	bash benchmarks/gpu_check.sh gpu_check_out

bench: $(STAMP)
	bash benchmarks/run_cpu_bench.sh

clean:
	rm -rf exports build dist *.egg-info .pytest_cache
