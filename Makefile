# The two commands of the README:
#   make demo   set up a virtual environment, make the phantom, run participant + group
#   make test   set up the same environment and run the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO ?= demo

export NIPYPE_NO_ET := 1
export MPLBACKEND := Agg
export TEMPLATEFLOW_HOME := $(CURDIR)/bids_muscle/data/templateflow

.PHONY: install demo test clean-demo

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

install: $(VENV)/.installed

demo: install
	test -d $(DEMO)/bids || $(BIN)/bids_muscle-phantom $(DEMO)/bids --participants 2 --seed 0
	$(BIN)/bids_muscle $(DEMO)/bids $(DEMO)/out participant -w $(DEMO)/work
	$(BIN)/bids_muscle $(DEMO)/bids $(DEMO)/out group -w $(DEMO)/work
	@echo
	@echo "Participant reports: $(CURDIR)/$(DEMO)/out/sub-01.html, $(CURDIR)/$(DEMO)/out/sub-02.html"
	@echo "Per-muscle tables:   $(CURDIR)/$(DEMO)/out/sub-*/anat/*_biomarkers.tsv"
	@echo "Group tables:        $(CURDIR)/$(DEMO)/out/group/ (report.html, biomarkers.tsv)"

test: install
	$(BIN)/python -m pytest -q

clean-demo:
	rm -rf $(DEMO)
