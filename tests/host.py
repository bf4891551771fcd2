"""Find and import the real ComfyUI host (never a mock) and this pack as the package ``comfyui_vap``.

Where the host is looked for, in order: ``COMFYUI_PATH``; the ComfyUI that holds this pack in its
``custom_nodes/``; ``~/ComfyUI``.
"""
from __future__ import annotations

import importlib
import importlib.util
import pkgutil
import os
import sys

PACK_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACK_NAME = "comfyui_vap"


def _is_comfyui(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "comfy", "model_management.py")) and os.path.isfile(os.path.join(path, "main.py"))


def find_comfyui() -> tuple[str | None, str]:
    """(path or None, how it was looked for)."""
    env = os.environ.get("COMFYUI_PATH")
    if env:
        if _is_comfyui(env):
            return os.path.abspath(env), f"COMFYUI_PATH={env}"
        return None, f"COMFYUI_PATH={env} is not a ComfyUI checkout (no comfy/model_management.py)"
    parent = os.path.dirname(PACK_DIR)
    if os.path.basename(parent) == "custom_nodes" and _is_comfyui(os.path.dirname(parent)):
        return os.path.dirname(parent), "the ComfyUI whose custom_nodes/ holds this pack"
    home = os.path.expanduser("~/ComfyUI")
    if _is_comfyui(home):
        return home, "~/ComfyUI"
    return None, ("no ComfyUI found: set COMFYUI_PATH to a ComfyUI >= 0.25 checkout, or put this pack in "
                  "ComfyUI/custom_nodes/")


COMFYUI_PATH, HOW_FOUND = find_comfyui()
_imported = False


def import_host():
    """Put ComfyUI on sys.path in CPU mode and import this pack. Returns the pack module."""
    global _imported
    if COMFYUI_PATH is None:
        raise RuntimeError(HOW_FOUND)
    if not _imported:
        if COMFYUI_PATH not in sys.path:
            sys.path.insert(0, COMFYUI_PATH)
        from comfy.cli_args import args
        args.cpu = True  # before comfy.model_management: there is no GPU here
        import comfy.model_management  # noqa: F401
        _imported = True
    return import_pack()


def import_pack():
    if PACK_NAME in sys.modules:
        return sys.modules[PACK_NAME]
    spec = importlib.util.spec_from_file_location(
        PACK_NAME, os.path.join(PACK_DIR, "__init__.py"), submodule_search_locations=[PACK_DIR])
    module = importlib.util.module_from_spec(spec)
    sys.modules[PACK_NAME] = module
    spec.loader.exec_module(module)
    # import every submodule so tests can write pack.vap_core.wan.apply, pack.nodes.expert_nodes, ...
    for sub in ("vap_core", "nodes"):
        package = importlib.import_module(f"{PACK_NAME}.{sub}")
        for info in pkgutil.walk_packages(package.__path__, prefix=f"{PACK_NAME}.{sub}."):
            importlib.import_module(info.name)
    return module


def golden_dir() -> str | None:
    path = os.environ.get("VAP_GOLDEN_DIR") or os.path.join(PACK_DIR, "..", "shared", "golden")
    return os.path.abspath(path) if os.path.isdir(path) else None


def golden_cases(class_prefix: str) -> list[str]:
    """Case folders whose transformer/config.json names a class starting with ``class_prefix``."""
    import json
    root = golden_dir()
    if root is None:
        return []
    out = []
    for name in sorted(os.listdir(root)):
        cfg = os.path.join(root, name, "transformer", "config.json")
        if os.path.isfile(cfg):
            with open(cfg) as f:
                if json.load(f).get("_class_name", "").startswith(class_prefix):
                    out.append(os.path.join(root, name))
    return out
