"""Read expert weights from any accepted file into a native-named state dict (no host needed)."""
from __future__ import annotations

import json
import os
from typing import Callable

import torch

from ..wan import keys as wan_keys
from .checkpoint import EXPERT_FORMAT, WAN, open_official, variant_of_keys
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
    """(native expert state dict, metadata) from an expert file, an official single file, or an official release
    folder (``<release>/`` holding ``transformer/``, or ``transformer/`` itself).

    ``load_file(path)`` -> {name: tensor} loads a single file's tensors (the loader passes ComfyUI's
    ``comfy.utils.load_torch_file``: memory-mapped, and in ComfyUI's dynamic-VRAM mode with the file offsets it
    streams weights to the GPU from); default: this package's memory-mapped reader. The header (names,
    metadata) is read here either way. From a release folder only the expert tensors are read, one at a time and
    shard by shard, through the converter's reader (the base tensors in the same shards are never loaded), under
    the names and metadata the converter writes."""
    if os.path.isdir(path):
        return _official_expert(open_official(path))
    tensors = LazyTensors([path])
    get = tensors.get if load_file is None else load_file(path).__getitem__
    meta = tensors.metadata
    if meta.get("vap_format") == EXPERT_FORMAT:
        sd = {k: get(k) for k in tensors.keys()}
        return sd, dict(meta)
    if variant_of_keys(tensors.keys()) is None:
        raise VAPFormatError(
            f"'{path}' is not a Video-As-Prompt expert: it has no '*_mot_ref' tensors and no ComfyUI-VAP "
            "metadata. Put the official VAP checkpoint or an expert file written by "
            "'python -m vap_core.convert' into models/vap/.")
    return _official_expert(open_official(path), get)


def _official_expert(ckpt, get: Callable[[str], torch.Tensor] | None = None
                     ) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    tensors = ckpt.tensors
    if ckpt.variant == WAN:
        _, expert_map = wan_keys.split_and_map(tensors.keys())
    else:
        from ..cogvideox import keys as cog_keys
        expert_map = cog_keys.expert_map(tensors.keys())
    if get is None:
        get = tensors.get
    # shard by shard, as the converter writes: each shard is opened once
    order = {f: i for i, f in enumerate(tensors.files_in_order())}
    names = sorted(expert_map, key=lambda n: (order[tensors.where[expert_map[n]]], n))
    sd = {native: get(expert_map[native]) for native in names}
    return sd, expert_metadata(ckpt.variant, ckpt.expert_blocks, ckpt.config)
