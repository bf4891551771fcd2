"""The layout promises of docs/DESIGN.md, checked on the source: runtime code never imports the tests, vap_core
has no node code, formats/ no ComfyUI, and each reference cond name is defined once."""
from __future__ import annotations

import ast
import os

import host

PACK = host.PACK_DIR
TEST_MODULES = {f[:-3] for f in os.listdir(os.path.join(PACK, "tests")) if f.endswith(".py")} | {"tests"}


def _python_files(*folders):
    for folder in folders:
        top = os.path.join(PACK, folder)
        if os.path.isfile(top):
            yield top
            continue
        for root, dirs, files in os.walk(top):
            dirs[:] = [d for d in dirs if d != "__pycache__"]
            yield from (os.path.join(root, f) for f in files if f.endswith(".py"))


def _imports(path):
    """(module, level) of every import in the file, nested ones included."""
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from ((a.name, 0) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            yield (node.module or "", node.level)
            if node.module is None:
                yield from ((a.name, node.level) for a in node.names)


def test_runtime_code_imports_nothing_from_tests():
    for path in _python_files("__init__.py", "nodes", "vap_core", "vap_headless", "workflows"):
        for module, level in _imports(path):
            assert level or module.split(".")[0] not in TEST_MODULES, f"{path} imports {module} (a test module)"
        assert "\"tests\"" not in open(path, encoding="utf-8").read(), f"{path} names the tests folder"


def test_vap_core_has_no_node_code_and_formats_no_host():
    for path in _python_files("vap_core"):
        for module, level in _imports(path):
            assert not module.startswith("comfy_api"), f"{path}: node API in vap_core"
            assert not (level >= 2 and module.split(".")[0] == "nodes"), f"{path} imports the nodes"
    for path in _python_files(os.path.join("vap_core", "formats"), os.path.join("vap_core", "convert.py")):
        for module, level in _imports(path):
            top = module.split(".")[0]
            assert level or top not in ("comfy", "folder_paths", "nodes"), f"{path} imports ComfyUI ({module})"


def test_each_reference_cond_name_is_defined_once():
    from vap_core import conds
    names = [v for k, v in vars(conds).items() if k.startswith("REF_")]
    assert len(names) == 4
    for name in names:
        holders = [p for p in _python_files("nodes", "vap_core") if f'"{name}"' in open(p, encoding="utf-8").read()]
        assert holders == [os.path.join(PACK, "vap_core", "conds.py")], (name, holders)
