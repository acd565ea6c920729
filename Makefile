# The two commands of the README:
#   make demo   set up a virtual environment, make the phantom, run participant + group
#   make test   set up the same environment and run the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO ?= demo
# The CPU build of torch: PyTorch's CPU index is searched beside PyPI, whose own
# Linux wheel is the multi-GB CUDA build. Empty it to take PyPI's build (GPU use).
TORCH_INDEX ?= --extra-index-url https://download.pytorch.org/whl/cpu

export NIPYPE_NO_ET := 1
export MPLBACKEND := Agg
export TEMPLATEFLOW_HOME := $(CURDIR)/bids_muscle/data/templateflow

.PHONY: install demo test clean-demo image

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet torch==2.13.0 $(TORCH_INDEX)
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

install: $(VENV)/.installed

demo: install
	$(BIN)/bids_muscle-demo $(DEMO)

test: install
	$(BIN)/python -m pytest -q

clean-demo:
	rm -rf $(DEMO)

# The container image bids_muscle:<version> (and :latest). BASE, TORCH_WHEELS,
# TORCH_INDEX and CA_BUNDLE choose the base image, where torch comes from and
# the CA bundle pip trusts during the build: see docker/build-image.sh.
image:
	docker/build-image.sh
