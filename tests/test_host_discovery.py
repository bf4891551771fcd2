"""Host tests find ComfyUI through COMFYUI_PATH, or as the ComfyUI whose custom_nodes/ holds the pack."""
import os
import subprocess
import sys

import host


def _found(pack_dir, env_path=None):
    env = {k: v for k, v in os.environ.items() if k != "COMFYUI_PATH"}
    env["HOME"] = "/nonexistent-home"  # keep ~/ComfyUI out of it
    if env_path is not None:
        env["COMFYUI_PATH"] = env_path
    code = f"import sys; sys.path.insert(0, {os.path.join(pack_dir, 'tests')!r}); import host; print(host.COMFYUI_PATH); print(host.HOW_FOUND)"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    return out.splitlines()


def _fake_comfyui(root):
    os.makedirs(os.path.join(root, "comfy"))
    open(os.path.join(root, "comfy", "model_management.py"), "w").close()
    open(os.path.join(root, "main.py"), "w").close()
    os.makedirs(os.path.join(root, "custom_nodes"))
    return root


def test_found_from_custom_nodes(tmp_path):
    root = _fake_comfyui(str(tmp_path / "ComfyUI"))
    link = os.path.join(root, "custom_nodes", "ComfyUI-VAP")
    os.symlink(host.PACK_DIR, link)
    path, how = _found(link)
    assert path == root and "custom_nodes" in how


def test_found_from_env_and_bad_env_is_reported(tmp_path):
    root = _fake_comfyui(str(tmp_path / "elsewhere"))
    assert _found(host.PACK_DIR, root)[0] == root
    path, how = _found(host.PACK_DIR, str(tmp_path / "not-comfy"))
    assert path == "None" and "not a ComfyUI checkout" in how


def test_no_host_gives_reason(tmp_path):
    path, how = _found(host.PACK_DIR)
    assert path == "None" and "COMFYUI_PATH" in how
