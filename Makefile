# The two commands of the quick start:
#   make run    installs byzbench and runs the main job (configs/grid.yaml, bundled digits data)
#   make test   installs the dev extras and runs the test suite
#   make data   provisions real Fashion-MNIST (DATASET=mnist|cifar10 for the others; APT=1 lets
#               it run apt-get install dataset-fashion-mnist on Debian/Ubuntu)
PYTHON ?= python3
PIP = $(PYTHON) -m pip
# torch: a CPU build is installed first when torch is missing, so that the `torch>=2.3`
# requirement is already met and pip pulls no CUDA packages.
TORCH_VERSION ?= 2.13.0
WORKERS ?=
DATASET ?= fashion_mnist
APT ?=

.PHONY: install dev run quick test lint docs bench results clean data

install:
	@$(PYTHON) -c "import torch" 2>/dev/null || $(PIP) install "torch==$(TORCH_VERSION)"
	$(PIP) install -q -e .

dev:
	@$(PYTHON) -c "import torch" 2>/dev/null || $(PIP) install "torch==$(TORCH_VERSION)"
	$(PIP) install -q -e '.[dev]'

run: install
	$(PYTHON) -m byzbench run configs/grid.yaml $(if $(WORKERS),--workers $(WORKERS))

# the dataset's files: already present (data/<name>, or the OS package's directory), else with
# APT=1 the OS package, else a torchvision download; one line says where and from what source
data: install
	$(PYTHON) -m byzbench data fetch $(DATASET) $(if $(APT),--apt)

quick: install
	$(PYTHON) -m byzbench run configs/quick.yaml

test: dev
	$(PYTHON) -m pytest -q

lint: dev
	$(PYTHON) -m ruff check byzbench tests benchmarks examples

# regenerate the component tables of README.md and docs/*.md from the registry (byzbench/docs.py)
docs:
	$(PYTHON) -m byzbench.docs

# regenerate the committed reports of the main grid, the seed table, the backdoor grid and
# the privacy grid (docs/reports/: outside results/, which is the user's own)
results: install
	$(PYTHON) -m byzbench run configs/grid.yaml $(if $(WORKERS),--workers $(WORKERS)) --quiet
	$(PYTHON) -m byzbench report results/grid -o docs/reports/grid --format md,csv,html
	$(PYTHON) -m byzbench run configs/seed_table.yaml $(if $(WORKERS),--workers $(WORKERS)) --quiet
	$(PYTHON) -m byzbench report results/seed_table -o docs/reports/seed_table \
		--format md,csv,html --reference configs/references/seed_document.yaml
	$(PYTHON) -m byzbench run configs/backdoor.yaml $(if $(WORKERS),--workers $(WORKERS)) --quiet
	$(PYTHON) -m byzbench report results/backdoor -o docs/reports/backdoor --format md,csv,html
	$(PYTHON) -m byzbench run configs/privacy.yaml $(if $(WORKERS),--workers $(WORKERS)) --quiet
	$(PYTHON) -m byzbench report results/privacy -o docs/reports/privacy --format md,csv,html

bench: install
	$(PYTHON) benchmarks/bench_engine.py

clean:
	rm -rf results/quick results/grid build *.egg-info
