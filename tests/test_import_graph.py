"""The package's modules import one another in one direction: no import cycle, counting the imports
inside functions (a lazy import still ties the two modules together).

The graph is read from the source with ``ast``: every ``import``/``from … import`` at any depth of
every module of ``rwkv5/``, ``tokenizer/`` (installed as ``rwkv5.tokenizer``) and ``dataprep/``
(installed as ``rwkv5.dataprep``). ``from P import NAME`` counts as an import of ``P.NAME`` when that
is a module, else of ``P``.
"""

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = {
    "rwkv5": ROOT / "rwkv5",
    "rwkv5.tokenizer": ROOT / "tokenizer",
    "rwkv5.dataprep": ROOT / "dataprep",
}
EXTENSIONS = (
    "rwkv5._model",
    "rwkv5.tokenizer._tokenizer",
    "rwkv5.dataprep._dataprep",
)  # C: import nothing


def package_modules():
    """{module name: (path, is_package)} for every .py file of the three source folders (path None:
    a C extension)."""
    modules = {name: (None, False) for name in EXTENSIONS}
    for package, folder in PACKAGES.items():
        for path in sorted(folder.rglob("*.py")):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            is_package = parts[-1] == "__init__"
            if is_package:
                parts = parts[:-1]
            modules[".".join([package] + parts)] = (path, is_package)
    return modules


def import_graph(modules):
    """{module: set of the package's modules it imports}, imports at any depth included."""
    graph = {}
    for name, (path, is_package) in modules.items():
        graph[name] = set()
        if path is None:
            continue
        here = name if is_package else name.rpartition(".")[0]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = here.rsplit(".", node.level - 1)[0] if node.level > 1 else here
                    base = f"{base}.{node.module}" if node.module else base
                else:
                    base = node.module
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    targets.add(sub if sub in modules else base)
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def find_cycle(graph):
    """One import cycle as a list of modules [a, b, …, a], or None."""
    state = {}  # 1: on the current path, 2: done

    def visit(node, path):
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state:
                found = visit(nxt, path)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node, [])
            if found:
                return found
    return None


def test_the_graph_reader_sees_imports_inside_functions():
    graph = import_graph(package_modules())
    assert "rwkv5.model" in graph["rwkv5"] and "rwkv5.loading" in graph["rwkv5"]
    # rwkv5.formats.__init__ imports nothing eagerly; rwkv5.tiny imports the loader inside load()
    assert "rwkv5.loading" in graph["rwkv5.tiny"] or "rwkv5" in graph["rwkv5.tiny"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle():
    cycle = find_cycle(import_graph(package_modules()))
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


# the object-store packages: imported only by rwkv5/storage.py, and there only inside the functions
# that a URL reaches (a local path never imports them; tests/test_storage.py runs a local build and
# checks sys.modules)
STORE_PACKAGES = (
    "fsspec",
    "s3fs",
    "gcsfs",
    "huggingface_hub",
    "aiohttp",
    "botocore",
    "boto3",
    "aiobotocore",
)


def test_object_store_packages_only_lazily_in_storage():
    for name, (path, _pkg) in package_modules().items():
        if path is None:
            continue
        tree = ast.parse(path.read_text(), str(path))
        top_level = {id(n) for n in tree.body}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                mods = [node.module or ""]
            else:
                continue
            for mod in mods:
                if mod.split(".")[0] in STORE_PACKAGES:
                    assert name == "rwkv5.storage", (
                        f"{name} imports {mod}: go through rwkv5.storage"
                    )
                    assert id(node) not in top_level, f"rwkv5.storage imports {mod} at module level"
