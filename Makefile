# mxfs — two commands do all the setup on a fresh Debian machine (as root):
#   make demo   install what is missing, start a local server, mount, show it working
#   make test   install what is missing, run the whole suite (ruff included)
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
APT_PKGS := fuse3 libfuse3-dev pkg-config python3-venv python3-dev gcc rsync git sqlite3 fio attr iproute2 util-linux

.PHONY: all deps sysdeps test test-fast lint demo demo-stop bench conformance clean

all: test

sysdeps:
	@missing=""; for p in $(APT_PKGS); do \
	  dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing system packages:$$missing"; \
	  if [ "$$(id -u)" != 0 ]; then echo "need root to apt-get install$$missing" >&2; exit 1; fi; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get update -qq && apt-get install -y -qq $$missing >/dev/null; \
	fi
	@modprobe fuse 2>/dev/null || true

$(STAMP): pyproject.toml
	@command -v python3 >/dev/null || { echo "python3 missing" >&2; exit 1; }
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip >/dev/null
	$(PY) -m pip install -q -e '.[test,bench]'
	@if [ "$$(id -u)" = 0 ]; then $(PY) -m mxfs.cli install-helper --dir /sbin; \
	  else echo "not root: skipping /sbin/mount.fuse.mxfs (mount -t fuse.mxfs)"; fi
	touch $(STAMP)

deps: sysdeps $(STAMP)

lint: deps
	$(VENV)/bin/ruff check mxnet fsproto mxfs server tests bench tools

test: deps lint
	$(VENV)/bin/pytest -q

test-fast: deps
	$(VENV)/bin/pytest -q -m "not slow"

demo: deps
	$(PY) -m tools.demo

demo-stop: deps
	$(PY) -m tools.demo --stop

bench: deps
	$(PY) -m bench

# POSIX conformance: the third-party pjdfstest suite on a fresh mount, mx then gm (root).
# pjdfstest is not packaged: build a checkout elsewhere and pass its directory.
conformance: deps
	@if [ -z "$(PJDFSTEST)" ]; then \
	  echo "conformance: set PJDFSTEST to a built pjdfstest checkout (the directory holding"; \
	  echo "  ./pjdfstest and tests/), e.g.  make conformance PJDFSTEST=/opt/pjdfstest"; exit 2; fi
	@rc=0; for t in mx gm; do \
	  PJDFSTEST="$(PJDFSTEST)" tests/conformance/run_pjdfstest.sh $$t || rc=1; done; exit $$rc

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache .hypothesis
