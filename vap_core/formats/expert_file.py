"""Read expert weights from any accepted file into a native-named state dict (no host needed)."""
from __future__ import annotations

import json

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


def read_expert(path: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(native expert state dict, metadata) from an expert file or an official single file."""
    tensors = LazyTensors([path])
    meta = tensors.metadata
    if meta.get("vap_format") == EXPERT_FORMAT:
        sd = {k: tensors.get(k) for k in tensors.keys()}
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
        sd = {native: tensors.get(official) for native, official in expert_map.items()}
    elif variant == COG:
        from ..cogvideox import keys as cog_keys
        sd = {native: tensors.get(official) for native, official in cog_keys.expert_map(tensors.keys()).items()}
    return sd, expert_metadata(variant, ckpt.expert_blocks, ckpt.config)
