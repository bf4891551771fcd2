"""Find and open VAP checkpoints in the layouts users download.

Accepted:
- the official model folder (``Video-As-Prompt-Wan2.1-14B/``) that holds ``transformer/``;
- a ``transformer/`` folder itself: ``config.json`` + ``diffusion_pytorch_model*.safetensors``
  (one file, or shards listed in ``diffusion_pytorch_model.safetensors.index.json``);
- one official-layout ``.safetensors`` file (base + expert keys, or expert keys only);
- an expert file written by this pack's converter (native layout, metadata ``vap_format``).
"""
from __future__ import annotations

import glob
import json
import os
import re
from dataclasses import dataclass, field

from ..errors import VAPFormatError
from .safetensors_io import LazyTensors

WAN = "wan2.1"
COG = "cogvideox"

EXPERT_FORMAT = "comfyui-vap-expert/1"

_WAN_EXPERT_BLOCK = re.compile(r"^blocks\.(\d+)\.attn1_mot_ref\.to_q\.weight$")
_COG_EXPERT_BLOCK = re.compile(r"^transformer_blocks\.(\d+)\.attn1_mot_ref\.to_q\.weight$")


@dataclass
class OfficialCheckpoint:
    """An official-layout (diffusers fork) VAP transformer: tensors, config and what it is."""

    tensors: LazyTensors
    config: dict
    variant: str
    expert_blocks: list[int]
    source: str
    has_base: bool = field(default=True)


def _transformer_dir(path: str) -> str:
    if os.path.isdir(os.path.join(path, "transformer")):
        return os.path.join(path, "transformer")
    if glob.glob(os.path.join(path, "diffusion_pytorch_model*.safetensors")):
        return path
    raise VAPFormatError(
        f"'{path}' holds no 'transformer/' folder and no diffusion_pytorch_model*.safetensors. Point to the "
        "downloaded VAP model folder (e.g. Video-As-Prompt-Wan2.1-14B/, which contains transformer/) or to "
        "its transformer/ folder."
    )


def _shard_files(tdir: str) -> list[str]:
    index = os.path.join(tdir, "diffusion_pytorch_model.safetensors.index.json")
    if os.path.isfile(index):
        with open(index) as f:
            weight_map = json.load(f).get("weight_map", {})
        files = sorted(set(weight_map.values()))
        missing = [n for n in files if not os.path.isfile(os.path.join(tdir, n))]
        if missing:
            raise VAPFormatError(
                f"'{tdir}' is missing shard(s) {missing} listed in its index.json: finish the download."
            )
        return [os.path.join(tdir, n) for n in files]
    single = os.path.join(tdir, "diffusion_pytorch_model.safetensors")
    if os.path.isfile(single):
        return [single]
    bins = glob.glob(os.path.join(tdir, "*.bin")) + glob.glob(os.path.join(tdir, "*.pt*"))
    if bins:
        raise VAPFormatError(
            f"'{tdir}' holds only pickle weights ({os.path.basename(bins[0])}). ComfyUI-VAP loads safetensors "
            "only: download the .safetensors release."
        )
    raise VAPFormatError(f"'{tdir}' has no diffusion_pytorch_model*.safetensors: finish the download.")


def variant_of_keys(keys) -> str | None:
    """'wan2.1' / 'cogvideox' for official-layout keys with an expert, else None."""
    keys = list(keys)
    if any(_WAN_EXPERT_BLOCK.match(k) for k in keys) or "patch_embedding_mot_ref.weight" in keys:
        return WAN
    if any(_COG_EXPERT_BLOCK.match(k) for k in keys) or "patch_embed_mot_ref.proj.weight" in keys:
        return COG
    return None


def expert_blocks_of_keys(keys, variant: str) -> list[int]:
    pattern = _WAN_EXPERT_BLOCK if variant == WAN else _COG_EXPERT_BLOCK
    return sorted({int(m[1]) for k in keys if (m := pattern.match(k))})


def open_official(path: str, mmap: bool = True) -> OfficialCheckpoint:
    """Open an official-layout VAP transformer from a folder or a single safetensors file.

    ``mmap=False``: tensors are read into their own memory (streaming conversion; see safetensors_io)."""
    path = os.path.expanduser(path)
    if not os.path.exists(path):
        raise VAPFormatError(f"'{path}' does not exist.")
    config: dict = {}
    if os.path.isdir(path):
        tdir = _transformer_dir(path)
        files = _shard_files(tdir)
        cfg_path = os.path.join(tdir, "config.json")
        if os.path.isfile(cfg_path):
            with open(cfg_path) as f:
                config = json.load(f)
    else:
        if not path.endswith(".safetensors"):
            raise VAPFormatError(
                f"'{path}' is not a .safetensors file. ComfyUI-VAP reads safetensors only (never pickle)."
            )
        files = [path]
    tensors = LazyTensors(files, mmap=mmap)
    if tensors.metadata.get("vap_format") == EXPERT_FORMAT:
        raise VAPFormatError(
            f"'{path}' is already a converted ComfyUI-VAP expert file: load it with the VAP Expert Loader node "
            "instead of converting it again."
        )
    if not config and "config" in tensors.metadata:
        try:
            config = json.loads(tensors.metadata["config"])
        except ValueError:
            config = {}
    variant = variant_of_keys(tensors.keys())
    if variant is None:
        raise VAPFormatError(
            f"'{path}' contains no Video-As-Prompt expert (no '*_mot_ref' tensors). It looks like a plain base "
            "model: load it with ComfyUI's 'Load Diffusion Model' node, and give this converter the VAP "
            "checkpoint (ByteDance/Video-As-Prompt-*)."
        )
    has_base = any("_mot_ref" not in k for k in tensors.keys())
    return OfficialCheckpoint(tensors, config, variant, expert_blocks_of_keys(tensors.keys(), variant), path, has_base)
