# The two commands of the README:
#   make demo   set everything up, build the default image, run the demo
#   make test   set everything up, run the test suite
# Both start from a fresh Debian machine as root: system packages, then a
# virtualenv in .venv with the project installed into it.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test setup system lint bench clean

demo: setup
	$(VENV)/bin/nvramfs demo

test: setup
	$(PY) -m pytest -q -p no:cacheprovider

setup: system $(STAMP)

system:
	bash tools/setup-system.sh

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,plot,cluster]'
	touch $@

lint: setup
	$(VENV)/bin/ruff check nvramfs tools tests
	$(VENV)/bin/ruff format --check nvramfs tools tests

bench: setup
	$(PY) tools/bench_mm.py

clean:
	rm -rf $(VENV) build *.egg-info images/build
