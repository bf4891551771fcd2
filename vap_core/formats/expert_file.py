"""Read expert weights from any accepted file into a native-named state dict (no host needed)."""
from __future__ import annotations

import json
from typing import Callable

import torch

from ..wan import keys as wan_keys
from .checkpoint import COG, EXPERT_FORMAT, WAN, open_official, variant_of_keys
from ..errors import VAPFormatError
from .safetensors_io import LazyTensors


def expert_metadata(variant: str, blocks: list[int], config: dict) -> dict[str, str]:
    return {
        "vap_format": EXPERT_FORMAT,
        "vap_variant": variant,
        "vap_expert_blocks": json.dumps(blocks),
        "vap_config": json.dumps(config, sort_keys=True),
    }


def read_expert(path: str, load_file: Callable[[str], dict[str, torch.Tensor]] | None = None
                ) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(native expert state dict, metadata) from an expert file or an official single file.

    ``load_file(path)`` -> {name: tensor} loads the file's tensors (the loader passes ComfyUI's
    ``comfy.utils.load_torch_file``: memory-mapped, and in ComfyUI's dynamic-VRAM mode with the file offsets it
    streams weights to the GPU from); default: this package's memory-mapped reader. The header (names,
    metadata) is read here either way."""
    tensors = LazyTensors([path])
    get = tensors.get if load_file is None else load_file(path).__getitem__
    meta = tensors.metadata
    if meta.get("vap_format") == EXPERT_FORMAT:
        sd = {k: get(k) for k in tensors.keys()}
        return sd, dict(meta)
    variant = variant_of_keys(tensors.keys())
    if variant is None:
        raise VAPFormatError(
            f"'{path}' is not a Video-As-Prompt expert: it has no '*_mot_ref' tensors and no ComfyUI-VAP "
            "metadata. Put the official VAP checkpoint or an expert file written by "
            "'python -m vap_core.convert' into models/vap/.")
    ckpt = open_official(path)
    if variant == WAN:
        _, expert_map = wan_keys.split_and_map(tensors.keys())
        sd = {native: get(official) for native, official in expert_map.items()}
    elif variant == COG:
        from ..cogvideox import keys as cog_keys
        sd = {native: get(official) for native, official in cog_keys.expert_map(tensors.keys()).items()}
    return sd, expert_metadata(variant, ckpt.expert_blocks, ckpt.config)
