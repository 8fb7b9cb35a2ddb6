# The two commands of the README:
#   make demo   set everything up, build the default image, run the demo
#   make test   set everything up, run the test suite
# Both start from a fresh Debian machine as root: system packages, then a
# virtualenv in .venv with the project installed into it, then the mount(8)
# helper /sbin/mount.fuse.nvramfs (`make clean` removes it with the venv).

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# mount(8) finds the helper of `-t fuse.nvramfs` only in /sbin (and /sbin/fs.d,
# /sbin/fs), and runs it with PATH removed: a link to the venv's console script,
# whose #! names the venv's python, works from there.
SBINDIR ?= /sbin
HELPER  := $(SBINDIR)/mount.fuse.nvramfs
HELPER_TARGET := $(abspath $(VENV))/bin/mount.fuse.nvramfs

.PHONY: demo test setup system helper uninstall-helper lint bench clean

demo: setup
	$(VENV)/bin/nvramfs demo

test: setup
	$(PY) -m pytest -q -p no:cacheprovider

setup: system $(STAMP) helper

system:
	bash tools/setup-system.sh

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,plot,cluster]'
	touch $@

# Install the mount(8) helper (a symlink into this checkout's venv), as root.
helper: $(STAMP)
	@if [ -w "$(SBINDIR)" ]; then \
	  ln -sfn "$(HELPER_TARGET)" "$(HELPER)" && echo "installed $(HELPER) -> $(HELPER_TARGET)"; \
	else \
	  echo "note: $(SBINDIR) not writable: mount -t fuse.nvramfs needs $(HELPER) (run make helper as root)" >&2; \
	fi

# Remove the helper, but only if it is this checkout's.
uninstall-helper:
	@if [ "$$(readlink "$(HELPER)" 2>/dev/null)" = "$(HELPER_TARGET)" ]; then \
	  rm -f "$(HELPER)" && echo "removed $(HELPER)"; \
	fi

lint: setup
	$(VENV)/bin/ruff check nvramfs tools tests
	$(VENV)/bin/ruff format --check nvramfs tools tests

bench: setup
	$(PY) tools/bench_mm.py

clean: uninstall-helper
	rm -rf $(VENV) build *.egg-info images/build
