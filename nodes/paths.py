"""The pack's model folder: ``models/vap/`` (experts and official VAP checkpoints)."""
import os

import folder_paths

FOLDER = "vap"
EXTENSIONS = {".safetensors"}


def register_model_folder() -> None:
    """Add ``models/vap`` (keeping paths a user mapped in extra_model_paths.yaml), safetensors only."""
    default = os.path.join(folder_paths.models_dir, FOLDER)
    paths, _ = folder_paths.folder_names_and_paths.get(FOLDER, ([], set()))
    if default not in paths:
        paths = [default, *paths]
    folder_paths.folder_names_and_paths[FOLDER] = (paths, set(EXTENSIONS))


def expert_files() -> list[str]:
    register_model_folder()
    return folder_paths.get_filename_list(FOLDER)


def expert_path(name: str) -> str:
    register_model_folder()
    return folder_paths.get_full_path_or_raise(FOLDER, name)
