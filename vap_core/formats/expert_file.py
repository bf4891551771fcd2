"""Read expert weights from any accepted file into a native-named state dict (no host needed)."""
from __future__ import annotations

import json
import os

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
    """(native expert state dict, metadata) from an expert file, an official single file, or an official release
    folder (``<release>/`` holding ``transformer/``, or ``transformer/`` itself). From official weights only the
    expert tensors are read, one at a time, through the converter's reader (the base tensors in the same shards
    are never loaded), under the names and metadata the converter writes."""
    if os.path.isdir(path):
        return _official_expert(open_official(path))
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
    return _official_expert(open_official(path))


def _official_expert(ckpt) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    tensors = ckpt.tensors
    if ckpt.variant == WAN:
        _, expert_map = wan_keys.split_and_map(tensors.keys())
    else:
        from ..cogvideox import keys as cog_keys
        expert_map = cog_keys.expert_map(tensors.keys())
    # shard by shard, as the converter writes: each shard is opened once
    order = {f: i for i, f in enumerate(tensors.files_in_order())}
    names = sorted(expert_map, key=lambda n: (order[tensors.where[expert_map[n]]], n))
    sd = {native: tensors.get(expert_map[native]) for native in names}
    return sd, expert_metadata(ckpt.variant, ckpt.expert_blocks, ckpt.config)
