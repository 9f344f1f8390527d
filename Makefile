# The two commands a newcomer needs: `make run` and `make test`. Both install what is missing first.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEBIAN_PACKAGES := dcmtk orthanc dicom3tools
SUDO := $(shell [ "$$(id -u)" -eq 0 ] || echo sudo)

.PHONY: install debian-tools run test lint typecheck unit bench preview clean

install: $(STAMP) debian-tools

# torch and torchvision are pinned in setup.cfg; pip takes them from this machine's local wheels.
$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check --upgrade pip setuptools wheel
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $@

# Real peers the tests talk to: dcmtk (storescu, echoscu, dcmcjpeg), Orthanc, dicom3tools (dciodvfy).
debian-tools:
	@missing=""; \
	command -v storescu >/dev/null || missing="$$missing dcmtk"; \
	command -v Orthanc >/dev/null || [ -x /usr/sbin/Orthanc ] || missing="$$missing orthanc"; \
	command -v dciodvfy >/dev/null || missing="$$missing dicom3tools"; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing; \
	fi

run: install
	$(BIN)/dicomnode serve --config config/dicomnode.toml

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

preview: install
	$(BIN)/dicomnode-train synth --out var/synth-preview --studies 40 --seed 7 --preview var/synth-preview/sheet.png

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache *.egg-info
