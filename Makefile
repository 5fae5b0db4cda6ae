# lbctl: the two commands of a fresh machine are `sudo make demo` and `sudo make test`.
#
# Why this file exists: everything a fresh Debian bookworm box needs (apt
# packages, bpffs, a .venv with lbctl installed editable, the BPF objects) is
# set up here, idempotently and quickly when already done, so the README's two
# commands work anywhere and CI (.ci/run) runs exactly what a developer runs.
#
# Targets: setup lock build lint test demo bench deb deb-test clean distclean help.
# No sudo inside: run the targets that need root (setup, test, demo) as root.

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help
.DELETE_ON_ERROR:

VENV        := .venv
PY          := $(VENV)/bin/python
LBCTL       := $(VENV)/bin/lbctl
DEBIAN_PY   := /usr/bin/python3
VENV_STAMP  := $(VENV)/.lbctl-installed
LOCK        := requirements/dev-lock.txt
RESULTS     := build/test-results
# The whole venv run: it took ~8 minutes before the datapath grew to ~900k verified
# instructions per program (each test datapath now takes ~2.3 s to load, ~0.7 s before);
# until that is cut back, a limit well inside CI's 90 minutes.
TEST_TIMEOUT ?= 2700
PYTEST_ARGS ?=

# Tests that exercise a Debian-packaged library against the kernel: they run as
# root under Debian's interpreter too (the unit tests there are `-m "not root"`).
DEBIAN_ROOT_TESTS := tests/reconciler/drivers/test_netlink.py tests/reconciler/drivers/test_sysctl.py \
	tests/reconciler/drivers/test_contract.py

# Every package the build, the demo and the tests use. The datapath compiles
# against the headers of these packages only (bpf/Makefile: -nostdinc), so a
# header from an unlisted package fails the build here too.
APT_PACKAGES := clang llvm libbpf-dev linux-libc-dev bpftool iproute2 ethtool iptables nftables \
	iperf3 wrk nginx-light curl socat python3-venv python3-pip python3-yaml \
	python3-jsonschema python3-watchdog python3-pyroute2 python3-cffi python3-rich \
	python3-pytest python3-hypothesis python3-kubernetes lua5.1 gobgpd frr golang-github-osrg-gobgp-dev time \
	openssl python3-grpcio bird2 python3-prometheus-client prometheus

LINT_PATHS := reconciler tests $(wildcard bench/*.py) $(wildcard examples/*/*.py) $(wildcard packaging/deb/tests/*.py)

.PHONY: help print-packages setup apt kubectl bpffs venv lock build lint test root-check test-venv test-debian demo demo-down bench deb deb-test clean distclean

help:
	@echo "lbctl make targets (run as root where noted):"
	@echo "  sudo make demo   set up, build, run the demo (namespaces: client, LB, 3 backends; left running)"
	@echo "  sudo make demo-down  remove the demo (datapath, pins, namespaces, backend servers)"
	@echo "  sudo make test   set up, build, lint, all tests in .venv, unit tests under Debian's python3"
	@echo "  make setup       apt packages (root if any is missing), bpffs (root), .venv"
	@echo "  make lock        re-resolve the dev/test venv's dependencies into requirements/dev-lock.txt"
	@echo "  make build       compile the datapath (bpf/ -> build/bpf/*.o, copied into reconciler/datapath/)"
	@echo "  make lint        ruff + mypy (strict)"
	@echo "  make bench       run bench/*.py (tables to stdout, results in bench/results/)"
	@echo "  sudo make deb    build build/deb/lbctl_<version>_<arch>.deb (DEB_VERSION=... for a higher one)"
	@echo "  sudo make deb-test  build and test the package (lintian, bookworm root, upgrade under traffic)"
	@echo "  make clean       remove build outputs and caches (keeps .venv; distclean removes it too)"

# --- setup -------------------------------------------------------------------

setup: apt kubectl bpffs venv

# `kubectl kustomize` (tests/examples/test_argocd.py): Debian's kubernetes-client, unless a
# kubectl is already installed (another package's /usr/bin/kubectl conflicts with it).
kubectl:
	@command -v kubectl >/dev/null || { export DEBIAN_FRONTEND=noninteractive; apt-get update -qq; \
		apt-get install -y -qq --no-install-recommends kubernetes-client; }

# apt-get only runs when a package is missing, so a prepared box spends ~0.1 s here.
apt:
	@installed=$$(dpkg-query -W -f='$${Package} $${Status}\n' $(APT_PACKAGES) 2>/dev/null \
		| awk '$$NF == "installed" && $$(NF-1) == "ok" {print $$1}' || true); \
	missing=""; \
	for p in $(APT_PACKAGES); do \
		grep -qx "$$p" <<<"$$installed" || missing="$$missing $$p"; \
	done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" != 0 ]; then \
		echo "make setup: missing packages:$$missing"; \
		echo "  run 'sudo make setup' (or sudo make demo / sudo make test) to install them"; exit 1; \
	fi; \
	echo "make setup: installing$$missing"; \
	export DEBIAN_FRONTEND=noninteractive; \
	apt-get update -qq; \
	apt-get install -y -qq --no-install-recommends $(APT_PACKAGES)

# The package list, for tests/bpf/test_build.py (which drops one and sees the build fail).
print-packages:
	@echo $(APT_PACKAGES)

bpffs:
	@if ! mountpoint -q /sys/fs/bpf; then \
		if [ "$$(id -u)" = 0 ]; then \
			mount -t bpf bpf /sys/fs/bpf && echo "make setup: mounted bpffs at /sys/fs/bpf"; \
		else \
			echo "make setup: bpffs is not mounted at /sys/fs/bpf (as root: mount -t bpf bpf /sys/fs/bpf)"; \
		fi; \
	fi

venv: $(VENV_STAMP)

$(PY):
	$(DEBIAN_PY) -m venv $(VENV)

# The venv installs exactly the committed lock (versions and hashes; the build
# backend too, so the editable install fetches nothing unpinned), then lbctl
# itself without dependencies; `pip check` proves the lock satisfies
# pyproject.toml. pip runs only when the lock or pyproject.toml changed since the
# last install (or the venv is new). `make lock` refreshes the lock on purpose.
$(VENV_STAMP): pyproject.toml $(LOCK) | $(PY)
	$(PY) -m pip install -q --disable-pip-version-check --require-hashes --no-deps -r $(LOCK)
	$(PY) -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
	@$(PY) -m pip check --disable-pip-version-check >/dev/null || { $(PY) -m pip check; \
		echo "make venv: $(LOCK) does not satisfy pyproject.toml: run 'make lock' and commit it"; exit 1; }
	@touch $@

# Re-resolve every dev/test dependency to its newest release and rewrite the lock
# (with hashes). Run on purpose, review the diff, run `sudo make test`, commit.
lock:
	rm -rf build/lock-venv
	$(DEBIAN_PY) -m venv build/lock-venv
	build/lock-venv/bin/pip install -q --disable-pip-version-check 'pip-tools==7.6.2'
	build/lock-venv/bin/pip-compile -q --upgrade --generate-hashes --allow-unsafe --strip-extras \
		--no-emit-index-url --no-emit-find-links --extra dev \
		-o $(LOCK) pyproject.toml requirements/build.in
	rm -rf build/lock-venv
	@echo "make lock: $(LOCK) rewritten; review 'git diff $(LOCK)', run 'sudo make test', commit"

# --- build -------------------------------------------------------------------

# What lbctl loads at run time, as package data (pyproject.toml ships it; lbctl finds it
# with importlib.resources, reconciler/drivers/datapath_files.py): the object and the
# header cffi reads, copied from the same build. A file is replaced (atomically) only when
# it changed, so a running lbctl never reads a half-written one.
DATAPATH_DATA := reconciler/datapath
DATAPATH_FILES := build/bpf/lb_kern.o bpf/lb_shared.h

build: setup
	@if [ -f bpf/Makefile ]; then \
		$(MAKE) -C bpf PACKAGES="$(APT_PACKAGES)"; \
		mkdir -p $(DATAPATH_DATA); \
		for f in $(DATAPATH_FILES); do \
			dst=$(DATAPATH_DATA)/$$(basename $$f); \
			cmp -s $$f $$dst || { cp $$f $$dst.tmp && mv -f $$dst.tmp $$dst && echo "make build: $$f -> $$dst"; }; \
		done; \
	else \
		echo "make build: bpf/Makefile does not exist yet; skipping the datapath build"; \
	fi

# --- lint --------------------------------------------------------------------

lint: venv
	$(VENV)/bin/ruff check $(LINT_PATHS)
	$(VENV)/bin/mypy reconciler

# --- test --------------------------------------------------------------------

test: root-check setup build lint test-venv test-debian
	@echo "make test: all passed"

# Refuse politely instead of failing half-way through the root tests.
root-check:
	@if [ "$$(id -u)" != 0 ]; then \
		echo "make test needs root (network namespaces, bpffs, BPF programs): run 'sudo make test'"; \
		exit 1; \
	fi

# The full suite in the venv. Exit 5 (nothing collected) is a failure like any
# other non-zero status; tests.no_root_skips fails the run on a skipped root test.
test-venv: root-check setup build
	@mkdir -p $(RESULTS)
	@rc=0; timeout -k 10 $(TEST_TIMEOUT) $(PY) -m pytest -p tests.no_root_skips -rs \
		--junitxml=$(RESULTS)/venv.xml $(PYTEST_ARGS) || rc=$$?; \
	case $$rc in \
		0) ;; \
		5) echo "make test: pytest collected no tests (exit 5): that is a failure"; exit 1;; \
		124) echo "make test: the test suite exceeded $(TEST_TIMEOUT) s"; exit 1;; \
		*) exit $$rc;; \
	esac

# Unit tests once more under Debian's interpreter and Debian's python3-* libraries
# (PYTHONPATH=. instead of the venv), plus the tests in DEBIAN_ROOT_TESTS.
test-debian: root-check setup build
	@mkdir -p $(RESULTS)
	@rc=0; PYTHONPATH=. PYTHONNOUSERSITE=1 $(DEBIAN_PY) -m pytest -p no:cacheprovider -rs \
		-m "not root" --junitxml=$(RESULTS)/debian-unit.xml || rc=$$?; \
	if [ $$rc = 5 ]; then echo "make test: no unit tests collected under $(DEBIAN_PY) (exit 5)"; exit 1; fi; \
	[ $$rc = 0 ] || exit $$rc; \
	tests="$$(for t in $(DEBIAN_ROOT_TESTS); do [ -e $$t ] && echo $$t; done)"; \
	[ -n "$$tests" ] || exit 0; \
	rc=0; PYTHONPATH=. PYTHONNOUSERSITE=1 $(DEBIAN_PY) -m pytest -p no:cacheprovider -p tests.no_root_skips \
		-rs --junitxml=$(RESULTS)/debian-root.xml $$tests || rc=$$?; \
	if [ $$rc = 5 ]; then echo "make test: no tests collected from $$tests (exit 5)"; exit 1; fi; \
	exit $$rc

# --- demo / bench ------------------------------------------------------------

# The demo (examples/demo/run.sh) builds namespaces, applies examples/demo/,
# shows traffic move on an edit and leaves the box running; demo-down removes it.
# Without run.sh (a partial tree) it validates the example edge box instead.
demo: setup build
	@if [ -f examples/demo/run.sh ]; then exec bash examples/demo/run.sh; fi; \
	echo "== lbctl validate examples/configs"; \
	$(LBCTL) validate examples/configs; \
	echo; echo "The files: $$(cd examples/configs && ls | tr '\n' ' ')"; \
	echo "Next: 'sudo make test' runs the whole test suite."

demo-down: venv
	@exec bash examples/demo/run.sh down

# Every bench/*.py (not _helpers.py) prints a table and writes bench/results/NAME.md
# with date and machine; none asserts a time. A failing script fails the target.
bench: setup build
	@shopt -s nullglob; scripts=(); \
	for s in bench/*.py; do [[ $$(basename "$$s") == _* ]] || scripts+=("$$s"); done; \
	if [ $${#scripts[@]} = 0 ]; then echo "make bench: no bench/*.py yet"; exit 0; fi; \
	for s in "$${scripts[@]}"; do echo "== $$s"; $(PY) "$$s"; done

# --- Debian package ----------------------------------------------------------

# `make deb`: build/deb/lbctl_<version>_<arch>.deb from this checkout with Debian's tools
# (packaging/deb/build.sh; the Build-Depends come from packaging/deb/debian/control).
# DEB_VERSION=0.1.0+1 builds a higher version for an upgrade. `make deb-test` builds two
# versions and tests them (packaging/deb/tests: lintian, a fresh bookworm root, an upgrade
# under traffic in a namespace box, purge). DEB_PACKAGES: the tools both need.
DEB_OUT      := build/deb
DEB_VERSION  ?=
DEB_PACKAGES := dpkg-dev lintian mmdebstrap

deb: root-check
	DEB_PACKAGES="$(DEB_PACKAGES)" packaging/deb/build.sh $(DEB_OUT) $(DEB_VERSION)

deb-test: root-check setup build
	@rc=0; DEB_PACKAGES="$(DEB_PACKAGES)" $(PY) -m pytest -p tests.no_root_skips -rs packaging/deb/tests || rc=$$?; \
	if [ $$rc = 5 ]; then echo "make deb-test: no tests collected (exit 5)"; exit 1; fi; exit $$rc

# --- clean -------------------------------------------------------------------

clean:
	@if [ -f bpf/Makefile ]; then $(MAKE) -C bpf clean PACKAGES=none || true; fi
	rm -rf build $(DATAPATH_DATA) .pytest_cache .mypy_cache .ruff_cache
	find . -path ./.venv -prune -o -name __pycache__ -type d -print0 | xargs -0 rm -rf

distclean: clean
	rm -rf $(VENV) lbctl.egg-info
