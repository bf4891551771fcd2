"""The pack's model folder: ``models/vap/`` (experts, official VAP checkpoints and official release folders)."""
import glob
import os

import folder_paths

FOLDER = "vap"
EXTENSIONS = {".safetensors"}
TRANSFORMER = "transformer"  # an official release keeps its VAP transformer (base + expert) in <release>/transformer/

HOW_TO_FILL = (
    "Put one of these into ComfyUI/models/vap/: the official release folder as downloaded (e.g. "
    "models/vap/Video-As-Prompt-Wan2.1-14B/ holding transformer/ with its diffusion_pytorch_model-*.safetensors "
    "shards and their .index.json; the other folders of the release are not needed), or an expert file written by "
    "'python -m vap_core.convert <release folder> --expert ComfyUI/models/vap/<name>.safetensors' (smaller, "
    "faster to load). Then press R in ComfyUI (or restart it) to refresh the list.")


def register_model_folder() -> None:
    """Add ``models/vap`` (keeping paths a user mapped in extra_model_paths.yaml), safetensors only."""
    default = os.path.join(folder_paths.models_dir, FOLDER)
    paths, _ = folder_paths.folder_names_and_paths.get(FOLDER, ([], set()))
    if default not in paths:
        paths = [default, *paths]
    folder_paths.folder_names_and_paths[FOLDER] = (paths, set(EXTENSIONS))


def _is_release(folder: str) -> bool:
    return bool(glob.glob(os.path.join(folder, TRANSFORMER, "diffusion_pytorch_model*.safetensors")))


def release_folders() -> dict[str, str]:
    """{listed name ("<release>/"): path} of the official release folders directly in a models/vap path."""
    register_model_folder()
    found = {}
    for root in folder_paths.get_folder_paths(FOLDER):
        try:
            entries = sorted(os.listdir(root))
        except OSError:
            continue
        for entry in entries:
            path = os.path.join(root, entry)
            if os.path.isdir(path) and _is_release(path):
                found.setdefault(entry + "/", path)
    return found


def expert_files() -> list[str]:
    """The files in models/vap/ (not those inside a release folder: its shards are not experts on their own),
    then the release folders, listed as "<release>/"."""
    register_model_folder()
    releases = release_folders()
    files = [f for f in folder_paths.get_filename_list(FOLDER)
             if not any(f.replace(os.sep, "/").startswith(name) for name in releases)]
    return files + sorted(releases)


def expert_path(name: str) -> str:
    register_model_folder()
    if name.endswith("/"):
        path = release_folders().get(name)
        if path is None:
            raise FileNotFoundError(f"VAP release folder '{name}' is not in models/vap/. {HOW_TO_FILL}")
        return path
    return folder_paths.get_full_path_or_raise(FOLDER, name)


def fingerprint(path: str) -> str:
    """Changes when the file, or any file of a release's transformer/ folder, is replaced."""
    files = sorted(glob.glob(os.path.join(path, TRANSFORMER, "*"))) if os.path.isdir(path) else [path]
    return ";".join(f"{f}:{os.path.getmtime(f)}:{os.path.getsize(f)}" for f in files)
