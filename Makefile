# Everyday targets. `make train` and `make test` each set everything up on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
EPOCHS ?= 5
DEVICE ?= auto
RUN ?=
N ?= 10000
N_1000 ?=

.PHONY: install data train sample test lint format eval features bench bench-cpu bench-samplers bench-editing bench-studio bench-quality clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]' --config-settings editable_mode=compat
	touch $(STAMP)

data: install  ## fetch MNIST into data/
	$(BIN)/mnistdiff data download

train: data  ## train the default model (5 epochs) and draw a grid of its digits
	$(BIN)/mnistdiff train --epochs $(EPOCHS) --device $(DEVICE)
	$(BIN)/mnistdiff sample -n 64 -o artifacts/grid.png
	@echo "samples: artifacts/grid.png (and samples.png, loss.png in the run folder)"

sample: install  ## 64 digits from the latest run
	$(BIN)/mnistdiff sample -n 64 -o artifacts/grid.png $(if $(RUN),--run $(RUN))

test: install  ## the whole test suite
	$(BIN)/python -m pytest

lint: install  ## ruff's checks and its formatter (make format rewrites the files)
	$(BIN)/ruff check mnist_diffusion tests benchmarks
	$(BIN)/ruff format --check mnist_diffusion tests benchmarks

format: install
	$(BIN)/ruff format mnist_diffusion tests benchmarks

eval: install  ## sample-quality metrics of the latest run (N=10,000)
	$(BIN)/mnistdiff eval --num-samples $(N) $(if $(RUN),--run $(RUN))

features: data  ## retrain the shipped feature classifier used by eval
	$(BIN)/python -m mnist_diffusion.evaluation.features --data-dir data --out mnist_diffusion/assets

bench: data  ## training and sampling speed, see benchmarks/
	$(BIN)/python benchmarks/bench_speed.py

bench-cpu: data  ## the CPU path variant against variant: allocator, weights' layout when sampling, threads
	$(BIN)/python benchmarks/bench_cpu.py

bench-samplers: data  ## FID and wall time per sampler and step count for one run
	$(BIN)/python benchmarks/bench_samplers.py --n $(N) $(if $(N_1000),--n-1000 $(N_1000)) $(if $(RUN),--run $(RUN))

bench-editing: data  ## inpainting accuracy per mask and inversion PSNR for one run, on 1,000 test digits
	$(BIN)/python benchmarks/bench_editing.py $(if $(RUN),--run $(RUN))

STEPS ?= 1300
SEED ?= 0
LABEL ?= default
SET ?=
bench-quality: data  ## one row of the speedrun table: train one configuration for STEPS steps, score it at N
	$(BIN)/python benchmarks/bench_quality.py --label $(LABEL) --steps $(STEPS) --seed $(SEED) -n $(N) $(foreach s,$(SET),--set $(s))

bench-studio: data  ## how live the studio feels: first streamed step, whole sample, fill the rest
	$(BIN)/python benchmarks/bench_studio.py $(if $(RUN),--run $(RUN))

clean:
	rm -rf build dist *.egg-info .pytest_cache .ruff_cache
	find . -name __pycache__ -prune -exec rm -rf {} +
