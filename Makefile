# rwkv5 — the two set-up commands of the README are `make demo` and `make test`; each installs
# what it needs (Debian packages with apt-get, Python packages with pip) and then runs.
PY      ?= python3
PIP     := $(PY) -m pip
PYTEST  := $(PY) -m pytest
EXTRAS  ?= test

.PHONY: all sysdeps install demo test test-fast test-slow test-asan test-c bench bench-quick clean

all: install

# System packages: libzstd (headers + pkg-config file) for the data-prep extension.
sysdeps:
	@if ! pkg-config --exists libzstd 2>/dev/null; then \
	  echo "installing Debian packages: libzstd-dev pkg-config"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libzstd-dev pkg-config >/dev/null; \
	fi

# Editable install of the package with its C extensions (and the extras named in EXTRAS).
install: sysdeps
	$(PIP) install -q --disable-pip-version-check --root-user-action=ignore "setuptools>=68" wheel "numpy>=1.23"
	$(PIP) install -q --disable-pip-version-check --root-user-action=ignore --no-build-isolation -e ".[$(EXTRAS)]"

demo: install
	$(PY) -m rwkv5.demo

test: install test-c
	$(PYTEST) -q -ra

test-fast: install
	$(PYTEST) -q -x -m "not slow"

# The whole Python suite against an ASan+UBSan build of the extensions. libasan must be the
# first library loaded, hence LD_PRELOAD; leaks are checked by the C unit tests (Python itself
# holds memory at exit that LeakSanitizer would report).
test-asan: sysdeps
	RWKV5_SANITIZE=1 $(PIP) install -q --disable-pip-version-check --root-user-action=ignore --no-build-isolation -e ".[$(EXTRAS)]"
	LD_PRELOAD="$$(gcc -print-file-name=libasan.so) $$(gcc -print-file-name=libubsan.so)" \
	ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	  $(PYTEST) -q -x -p no:cacheprovider
	$(MAKE) test-c CSAN=1
	@echo "test-asan: done; run 'make install' to go back to the optimised build"

# C unit tests of the pure core (no Python): csrc/tests/test_*.c, each a standalone program.
CC      ?= cc
CFLAGS_C := -std=c11 -O2 -g -Wall -Wextra -Werror -pthread -D_GNU_SOURCE -Icsrc
ifeq ($(CSAN),1)
CFLAGS_C += -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
endif
test-c: sysdeps
	@mkdir -p csrc/tests/bin
	@set -e; for t in csrc/tests/test_*.c; do \
	  [ -e "$$t" ] || continue; \
	  name=$$(basename $$t .c); \
	  srcs=$$(sed -n 's#^// SOURCES: ##p' $$t); \
	  libs=$$(sed -n 's#^// LIBS: ##p' $$t); \
	  $(CC) $(CFLAGS_C) -o csrc/tests/bin/$$name $$t $$srcs -lm $$libs; \
	  ./csrc/tests/bin/$$name; \
	done

bench: EXTRAS = test,bench
bench: install
	$(PY) -m benchmarks

# A few minutes: fewer shapes, dtypes and repeats (see docs/performance.md).
bench-quick: EXTRAS = test,bench
bench-quick: install
	$(PY) -m benchmarks --quick

clean:
	rm -rf build dist *.egg-info csrc/tests/bin .pytest_cache
	find . -name '*.so' -path './rwkv5/*' -delete; find . -name '*.so' -path './tokenizer/*' -delete; find . -name '*.so' -path './dataprep/*' -delete
