# The two commands a newcomer needs: `make run` and `make test`. Both install what is missing first.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The demo model's recipe: an ensemble of two members, each trained alone with DEMO_FIT, scored
# with test-time flip and calibrated on an independent calibration archive (see the model card).
# About 12 minutes on one H100 GPU, data included (estimated); on a 2-core CPU, many hours.
DEMO_STUDIES ?= 6000
DEMO_CALIBRATION_STUDIES ?= 2400
# 2400 held-out studies (about 680 fractured) measure sensitivity to about +-0.02; 400 gave +-0.05.
DEMO_HELDOUT_STUDIES ?= 2400
DEMO_MEMBERS ?= rx_lite_bn resnet18_slim
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

# The bundled demo model, trained on the synthetic archive only (not for clinical use). Three
# archives from three seeds: training (1001), calibration of the ensemble (3003) and the
# held-out test of the model card (2002). Uncompressed/lossless syntaxes only, as the GPU
# machine had no JPEG encoders.
DEMO := config/models/wrist-demo
DEMO_WORK := var/demo
# Held-out figures are also reported per fracture kind, subtlety, implant and cast.
DEMO_SUBGROUPS = $(DEMO_WORK)/heldout/truth.csv --by fracture_kind,fracture_subtle,implant,cast
define demo_archive
	$(BIN)/dicomnode-train synth --out $(DEMO_WORK)/$(1) --studies $(2) --seed $(3) \
	  --syntaxes native --workers $(DEMO_WORKERS)
	$(BIN)/dicomnode-train prepare $(DEMO_WORK)/$(1) --labels $(DEMO_WORK)/$(1)/labels.csv \
	  --out $(DEMO_WORK)/$(1)-dataset --key-file $(DEMO_WORK)/pseudonym.key \
	  --workers $(DEMO_WORKERS)
endef
demo-model: install
	$(call demo_archive,archive,$(DEMO_STUDIES),1001)
	$(call demo_archive,calibration,$(DEMO_CALIBRATION_STUDIES),3003)
	$(call demo_archive,heldout,$(DEMO_HELDOUT_STUDIES),2002)
	for arch in $(DEMO_MEMBERS); do \
	  $(BIN)/dicomnode-train fit $(DEMO_WORK)/archive-dataset --arch $$arch \
	    --out $(DEMO_WORK)/run-$$arch $(DEMO_FIT) && \
	  $(BIN)/dicomnode-train export $(DEMO_WORK)/run-$$arch --out $(DEMO_WORK)/member-$$arch \
	    --name wrist-demo-member --version 2.1.0 --synthetic || exit 1; \
	done
	rm -rf $(DEMO)
	$(BIN)/dicomnode-train ensemble $(addprefix $(DEMO_WORK)/member-,$(DEMO_MEMBERS)) \
	  --out $(DEMO) --name wrist-demo --version 2.2.0 --synthetic --test-time-flip \
	  --calibration $(DEMO_WORK)/calibration-dataset --calibration-split all \
	  --external-test $(DEMO_WORK)/heldout-dataset --external-subgroups $(DEMO_SUBGROUPS)
	$(BIN)/dicomnode-train evaluate $(DEMO) $(DEMO_WORK)/heldout-dataset --split all --json \
	  --subgroups $(DEMO_SUBGROUPS) > $(DEMO)/heldout_evaluation.json
	$(BIN)/dicomnode-train evaluate $(DEMO) $(DEMO_WORK)/heldout-dataset --split all \
	  --subgroups $(DEMO_SUBGROUPS)

preview: install
	$(BIN)/dicomnode-train synth --out var/synth-preview --studies 40 --seed 7 --preview var/synth-preview/sheet.png

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache *.egg-info
