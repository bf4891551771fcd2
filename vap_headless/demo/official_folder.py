"""Write a state dict as an official diffusers model folder, the form the releases ship in."""
from __future__ import annotations

import json
import os

from safetensors.torch import save_file


def write_official_folder(root: str, sd: dict, config: dict, shards: int = 1) -> str:
    """An official model folder ``root/transformer/`` (config.json + one file or N shards + index)."""
    tdir = os.path.join(root, "transformer")
    os.makedirs(tdir, exist_ok=True)
    with open(os.path.join(tdir, "config.json"), "w") as f:
        json.dump(config, f)
    names = sorted(sd)
    if shards == 1:
        save_file({k: sd[k].contiguous() for k in names}, os.path.join(tdir, "diffusion_pytorch_model.safetensors"))
        return root
    weight_map = {}
    for i in range(shards):
        fname = f"diffusion_pytorch_model-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = names[i::shards]
        save_file({k: sd[k].contiguous() for k in part}, os.path.join(tdir, fname))
        weight_map.update({k: fname for k in part})
    with open(os.path.join(tdir, "diffusion_pytorch_model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {}, "weight_map": weight_map}, f)
    return root
