# The two commands a newcomer needs: `make run` and `make test`. Both install what is missing first.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The demo model's recipe (bench/demo_candidates.py chose the architecture on validation): about
# 7 minutes on one H100 GPU, data included; on a 2-core CPU, many hours.
DEMO_STUDIES ?= 6000
DEMO_ARCH ?= rx_large_bn
DEMO_FIT ?= --epochs 40 --batch-size 32 --lr 1e-3 --schedule cosine --warmup-epochs 2 --preload
DEMO_WORKERS ?= $(shell nproc)
DEBIAN_PACKAGES := dcmtk orthanc dicom3tools
SUDO := $(shell [ "$$(id -u)" -eq 0 ] || echo sudo)

.PHONY: install debian-tools run test lint typecheck unit bench preview demo demo-model clean

install: $(STAMP) debian-tools

# torch and torchvision are pinned in setup.cfg; pip takes them from this machine's local wheels.
$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check --upgrade pip setuptools wheel
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $@

# Real peers the tests talk to: dcmtk (storescu, echoscu, dcmcjpeg), Orthanc, dicom3tools
# (dciodvfy), systemd-analyze (the unit file).
debian-tools:
	@missing=""; \
	command -v storescu >/dev/null || missing="$$missing dcmtk"; \
	command -v Orthanc >/dev/null || [ -x /usr/sbin/Orthanc ] || missing="$$missing orthanc"; \
	command -v dciodvfy >/dev/null || missing="$$missing dicom3tools"; \
	command -v systemd-analyze >/dev/null || missing="$$missing systemd"; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing; \
	fi

run: install
	MALLOC_ARENA_MAX=2 $(BIN)/dicomnode serve --config config/dicomnode.toml

# The whole loop against a private Orthanc: a synthetic two-view wrist study in, SR out.
demo: install
	rm -rf var/demo-study
	$(BIN)/dicomnode-train synth --out var/demo-study --studies 1 --seed 4 --syntaxes explicit_le
	$(BIN)/python -m dicomnode.demo var/demo-study/dicom/*/*/*.dcm

lint: $(STAMP)
	$(BIN)/ruff check dicomnode pipeline train tests bench
	$(BIN)/ruff format --check dicomnode pipeline train tests bench

typecheck: $(STAMP)
	$(BIN)/mypy dicomnode pipeline train

unit: install
	$(BIN)/python -m pytest

test: install lint typecheck unit

bench: install
	$(BIN)/python bench/decode.py
	$(BIN)/python bench/preprocess.py
	$(BIN)/python bench/training.py --steps 4
	if [ -f $(DEMO)/model.json ]; then $(BIN)/python bench/inference.py --bundle $(DEMO); fi
	$(BIN)/python bench/ingest.py

# The bundled demo model, trained on the synthetic archive only (not for clinical use).
# Its bundle was made by these steps on one H200 GPU (fit: 109 s); on a 2-core CPU the fit
# takes hours. Uncompressed/lossless syntaxes only, as the GPU machine had no JPEG encoders.
DEMO := config/models/wrist-demo
DEMO_WORK := var/demo
demo-model: install
	$(BIN)/dicomnode-train synth --out $(DEMO_WORK)/archive --studies $(DEMO_STUDIES) --seed 1001 \
	  --syntaxes native --workers $(DEMO_WORKERS)
	$(BIN)/dicomnode-train prepare $(DEMO_WORK)/archive --labels $(DEMO_WORK)/archive/labels.csv \
	  --out $(DEMO_WORK)/dataset --key-file $(DEMO_WORK)/pseudonym.key --workers $(DEMO_WORKERS)
	$(BIN)/dicomnode-train synth --out $(DEMO_WORK)/heldout --studies 400 --seed 2002 \
	  --syntaxes native --workers $(DEMO_WORKERS)
	$(BIN)/dicomnode-train prepare $(DEMO_WORK)/heldout --labels $(DEMO_WORK)/heldout/labels.csv \
	  --out $(DEMO_WORK)/heldout-dataset --key-file $(DEMO_WORK)/pseudonym.key \
	  --workers $(DEMO_WORKERS)
	$(BIN)/dicomnode-train fit $(DEMO_WORK)/dataset --arch $(DEMO_ARCH) --out $(DEMO_WORK)/run \
	  $(DEMO_FIT)
	$(BIN)/dicomnode-train export $(DEMO_WORK)/run --out $(DEMO) --name wrist-demo \
	  --version 2.0.0 --synthetic --external-test $(DEMO_WORK)/heldout-dataset
	cp $(DEMO_WORK)/run/curves.png $(DEMO)/curves.png
	$(BIN)/dicomnode-train evaluate $(DEMO) $(DEMO_WORK)/heldout-dataset --split all --json \
	  > $(DEMO)/heldout_evaluation.json
	$(BIN)/dicomnode-train evaluate $(DEMO) $(DEMO_WORK)/heldout-dataset --split all

preview: install
	$(BIN)/dicomnode-train synth --out var/synth-preview --studies 40 --seed 7 --preview var/synth-preview/sheet.png

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache *.egg-info
