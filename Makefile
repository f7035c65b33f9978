# The two commands of the README: `make demo` and `make test`. Both create .venv when it is missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
# A wheel index for torch, e.g. TORCH_INDEX=https://download.pytorch.org/whl/cpu on a machine without a GPU (the
# plain PyPI wheel of the pinned torch is the large CUDA build). Empty: pip's own configuration decides.
TORCH_INDEX ?=
PIP_INDEX := $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX))

.PHONY: demo test install bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Reinstall when the project's metadata or the pins change.
$(STAMP): $(BIN)/python pyproject.toml constraints.txt
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(PIP_INDEX) -c constraints.txt -e ".[dev]"
	# Packages that ship real trained weights and a real nuclei image; their own dependencies (torchvision,
	# TensorFlow) are neither needed nor loadable with the CPU torch here, so they come without them.
	$(BIN)/python -m pip install --quiet --no-deps -c constraints.txt facenet-pytorch stardist
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/fcnkit demo --out demo-output

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The README's benchmark tables (long: about an hour on 2 cores). MONAI goes to /tmp, never into .venv.
bench: $(STAMP)
	$(BIN)/python -m pip install --quiet --no-deps --target /tmp/monai monai
	$(BIN)/python benchmarks/model_table.py
	$(BIN)/python benchmarks/convolutionalize.py
	$(BIN)/python benchmarks/tiling.py --monai-path /tmp/monai
	$(BIN)/python benchmarks/precision.py --monai-path /tmp/monai --compile
	$(BIN)/python benchmarks/tile_sweep.py
	$(BIN)/python benchmarks/train_scenes.py --steps 1500 --models fcn32s fcn16s fcn8s --out benchmarks/results/train_scenes_1500.json
	$(BIN)/python benchmarks/train_scenes.py --steps 600
	$(BIN)/python benchmarks/ddp_scaling.py
	$(BIN)/python benchmarks/nuclei.py --held-out tl --steps 600

clean:
	rm -rf $(VENV) demo-output .pytest_cache
