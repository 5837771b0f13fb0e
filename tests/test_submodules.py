"""Every public submodule of rwkv5 is reachable as an attribute after a bare `import rwkv5`."""

import pkgutil
import subprocess
import sys

import pytest

import rwkv5


def _public_submodules():
    names = {m.name for m in pkgutil.iter_modules(rwkv5.__path__) if not m.name.startswith("_")}
    # rwkv5.tokenizer and rwkv5.dataprep are installed from the tokenizer/ and dataprep/ folders
    return sorted(names | {"tokenizer", "dataprep"})


def test_the_list_covers_every_public_submodule():
    found = _public_submodules()
    assert {"testing", "reference", "generation", "scoring", "formats", "saving"} <= set(found)
    assert set(found) <= set(rwkv5.SUBMODULES), "add the new submodule to rwkv5.SUBMODULES"


@pytest.mark.parametrize("name", sorted(set(_public_submodules()) | set(rwkv5.SUBMODULES)))
def test_reachable_after_a_bare_import(name):
    # a fresh interpreter, so nothing imported by other tests makes the attribute exist already
    code = f"import rwkv5; m = rwkv5.{name}; assert m.__name__ == 'rwkv5.{name}', m.__name__; print('ok')"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]
    assert name in dir(rwkv5)


def test_testing_example_from_the_issue():
    r = subprocess.run(
        [sys.executable, "-c", "import rwkv5; print(len(rwkv5.testing.random_state_dict()))"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert int(r.stdout) > 10


def test_unknown_attribute_still_raises():
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        rwkv5.nope


def test_bare_import_stays_light():
    # the lazily reached submodules are not imported by `import rwkv5` itself
    code = (
        "import sys, rwkv5; heavy = [m for m in ('rwkv5.dataprep', 'rwkv5.reference', 'rwkv5.demo', "
        "'rwkv5.testing', 'rwkv5.scoring') if m in sys.modules]; print(heavy)"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "[]", (r.stdout, r.stderr[-2000:])


@pytest.mark.parametrize("package", ["formats", "tokenizer", "dataprep"])
def test_modules_of_subpackages_reachable_after_a_bare_import(package):
    import importlib

    pkg = importlib.import_module(f"rwkv5.{package}")
    names = sorted(
        m.name
        for m in pkgutil.iter_modules(pkg.__path__)
        if not m.name.startswith("_") and m.name != "__main__"
    )
    assert names
    # a module may share its name with the function it exports (rwkv5.dataprep.build is the function)
    code = (
        "import rwkv5, types\n"
        + "".join(
            f"m = rwkv5.{package}.{n}; assert (m.__name__ == 'rwkv5.{package}.{n}' "
            f"if isinstance(m, types.ModuleType) else '{n}' in rwkv5.{package}.__all__), '{n}'\n"
            for n in names
        )
        + "print('ok')"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]
