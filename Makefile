# provision — the two commands of the quick start are `make demo` and `make test`.
# Both set up everything they need: Debian packages (only when missing), a venv, Python packages.

PYTHON  ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed

# Build pyscard (no Linux wheel on PyPI), run the OpenSSL producer of test PKCS#12 files, and the
# PC/SC harness and peers of the card tiers.
DEBIAN_BUILD   := gcc swig libpcsclite-dev openssl
DEBIAN_HARNESS := pcscd vsmartcard-vpcd opensc yubico-piv-tool pcsc-tools libnss3-tools tmux chromium fonts-noto-cjk fonts-dejavu-core softhsm2 p11-kit p11-kit-modules postgresql gnutls-bin openjdk-17-jre-headless ykcs11

.PHONY: all setup catalogs docs demo test test-installed dist fresh-check lint typecheck test-unit bench profile faults clean

all: test

$(STAMP): pyproject.toml
	@.ci/debian-packages $(DEBIAN_BUILD)
	@.ci/python-headers $(PYTHON)
	@$(PYTHON) -c 'import ensurepip' 2>/dev/null || .ci/debian-packages python3-venv
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install -q --upgrade pip
	@$(BIN)/python -m pip install -q -e '.[dev]' --config-settings editable_mode=compat
	@touch $@

setup: $(STAMP)
	@.ci/debian-packages $(DEBIAN_HARNESS)

# The demo writes its PKCS#12 and secret files to jobs/certs/ (git-ignored), so the example job
# files in jobs/ validate afterwards, and its journal, audit log, store and reports to logs/.
demo: setup
	$(BIN)/provision demo --dir jobs

# The translations (provision/locale/): extract the texts of the source into provision.pot, merge them
# into each language's .po (new texts arrive empty; tests/unit/test_i18n.py fails until translated)
# and compile the .mo files the program reads. Both are committed.
catalogs: $(STAMP)
	$(BIN)/python tools/catalogs.py

# The guides' pictures (docs/pictures/: counter screens recorded from the real counter code as SVG,
# the HTML report and its PNG from headless Chromium, a plan with a card present) and the job-file
# reference (docs/jobfile.md, from schemas/job.schema.json). tests/sim/test_docs_pictures.py and
# tests/unit/test_docs.py fail when a committed one no longer matches what the code renders.
docs: setup
	$(BIN)/python tools/docgen.py

lint: $(STAMP)
	$(BIN)/ruff check provision tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

test-unit: $(STAMP)
	$(BIN)/pytest tests/unit -q

# Every tier runs; a tier that cannot run (missing pcscd, peers) fails instead of skipping. The
# checkout's tiers first (editable install), then what users get: the wheel installed in a fresh venv
# and the one-file build, run from outside the checkout (.ci/installed-tier).
test: setup lint typecheck
	PROVISION_REQUIRE_ALL_TIERS=1 $(BIN)/pytest tests --ignore=tests/installed
	@.ci/installed-tier

test-installed: setup
	@.ci/installed-tier

# What users install: dist/provision-*.tar.gz, dist/provision-*.whl (built from the sdist) and the
# one-file dist/provision for counter PCs without Python (packaging/provision.spec), smoke-tested
# from an empty directory with nothing on PATH.
dist: $(STAMP)
	rm -rf dist build/pyinstaller
	$(BIN)/python -m build --outdir dist .
	$(BIN)/python -m PyInstaller --noconfirm --clean --log-level WARN --distpath dist \
		--workpath build/pyinstaller packaging/provision.spec
	cd /tmp && PROVISION_ONEFILE=$(CURDIR)/dist/provision $(CURDIR)/$(BIN)/pytest -q -p no:cacheprovider \
		-c $(CURDIR)/pyproject.toml --rootdir $(CURDIR) $(CURDIR)/tests/installed/test_onefile.py

# make demo and make test in a minimal Debian root (debootstrap minbase + make, git, python3), from a
# clone of this repository's HEAD: proves the Makefile installs everything a fresh machine lacks.
fresh-check:
	.ci/fresh-check

# make bench BENCH_ARGS=--quick for a two-minute run
bench: setup
	$(BIN)/python bench/run.py $(BENCH_ARGS)
	$(BIN)/python bench/queue_bench.py

# One `provision run` of one card by phase, next to the card's own APDU time (bench/profile_load.py)
profile: setup
	$(BIN)/python bench/profile_load.py $(PROFILE_ARGS)

# The whole fault campaign with its summary table (make test runs the reduced form).
faults: setup
	PROVISION_FAULTS=full PROVISION_REQUIRE_ALL_TIERS=1 $(BIN)/pytest tests/faults -q

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
