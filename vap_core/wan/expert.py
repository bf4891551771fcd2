"""The Wan2.1 VAP expert as a ComfyUI-native module.

Built from ComfyUI's own Wan classes (``WanAttentionBlock``, ``MLPProj``) with ``comfy.ops`` layers,
so ComfyUI's memory manager can load, offload and partially load it (lowvram casts per call) and
LoRAs patch it like any model. Its state dict uses native Wan names (see ``wan_keys``).
"""
from __future__ import annotations

import torch
from torch import nn

from comfy.ldm.wan.model import MLPProj, WanAttentionBlock

from ..errors import VAPModelMismatch


class WanVAPExpert(nn.Module):
    """Reference-stream weights: embeddings plus one block per expert position."""

    def __init__(self, dim, ffn_dim, num_heads, in_dim, text_dim, freq_dim, expert_blocks,
                 image_dim=1280, eps=1e-6, patch_size=(1, 2, 2), device=None, dtype=None, operations=None):
        super().__init__()
        self.dim, self.ffn_dim, self.num_heads = dim, ffn_dim, num_heads
        self.in_dim, self.text_dim, self.freq_dim = in_dim, text_dim, freq_dim
        self.patch_size = tuple(patch_size)
        self.expert_blocks = sorted(int(i) for i in expert_blocks)
        settings = {"operations": operations, "device": device, "dtype": dtype}
        self.patch_embedding = operations.Conv3d(in_dim, dim, kernel_size=patch_size, stride=patch_size, device=device, dtype=dtype)
        self.text_embedding = nn.Sequential(
            operations.Linear(text_dim, dim, device=device, dtype=dtype), nn.GELU(approximate="tanh"),
            operations.Linear(dim, dim, device=device, dtype=dtype))
        self.time_embedding = nn.Sequential(
            operations.Linear(freq_dim, dim, device=device, dtype=dtype), nn.SiLU(),
            operations.Linear(dim, dim, device=device, dtype=dtype))
        self.time_projection = nn.Sequential(nn.SiLU(), operations.Linear(dim, dim * 6, device=device, dtype=dtype))
        self.img_emb = MLPProj(image_dim, dim, operation_settings=settings)
        self.blocks = nn.ModuleDict({
            str(i): WanAttentionBlock("i2v_cross_attn", dim, ffn_dim, num_heads, (-1, -1), True, True, eps,
                                      operation_settings=settings)
            for i in self.expert_blocks
        })

    def block(self, index: int):
        return self.blocks[str(index)] if str(index) in self.blocks else None

    @classmethod
    def config_from_state_dict(cls, sd: dict, num_heads: int | None = None) -> dict:
        """Architecture from tensor shapes (head count from metadata; head dim 128 like every Wan2.1)."""
        dim, in_dim = sd["patch_embedding.weight"].shape[:2]
        blocks = sorted({int(k.split(".")[1]) for k in sd if k.startswith("blocks.")})
        if not blocks:
            raise VAPModelMismatch("the expert file has no expert blocks (blocks.N.*): it is incomplete; convert it again.")
        return {
            "dim": int(dim),
            "in_dim": int(in_dim),
            "ffn_dim": int(sd[f"blocks.{blocks[0]}.ffn.0.weight"].shape[0]),
            "text_dim": int(sd["text_embedding.0.weight"].shape[1]),
            "freq_dim": int(sd["time_embedding.0.weight"].shape[1]),
            "image_dim": int(sd["img_emb.proj.0.weight"].shape[0]),
            "num_heads": int(num_heads) if num_heads else int(dim) // 128,
            "expert_blocks": blocks,
        }

    def check_fits(self, wan) -> None:
        """Raise a clear error if this expert cannot run on the native WanModel ``wan``."""
        name = type(wan).__name__
        if not hasattr(wan, "blocks") or not hasattr(wan, "head") or not hasattr(wan, "rope_encode"):
            raise VAPModelMismatch(
                f"the VAP Wan expert needs a Wan2.1 model, but MODEL is {name}. Load Wan2.1-I2V-14B "
                "(480P) with 'Load Diffusion Model' and connect it here.")
        if getattr(wan, "img_emb", None) is None or wan.in_dim != self.in_dim:
            raise VAPModelMismatch(
                f"this base is a Wan text-to-video model (in_dim {wan.in_dim}, no CLIP image embedding); "
                f"VAP needs the image-to-video base: load Wan2.1-I2V-14B-480P.")
        if wan.dim != self.dim or wan.num_heads != self.num_heads:
            raise VAPModelMismatch(
                f"the expert is {self.dim} wide ({self.num_heads} heads) but the base Wan model is {wan.dim} wide "
                f"({wan.num_heads} heads) - e.g. a Wan 1.3B base. Use the base the expert was trained on: "
                "Wan2.1-I2V-14B-480P.")
        if self.expert_blocks[-1] >= len(wan.blocks) or wan.ffn_dim != self.ffn_dim or wan.text_dim != self.text_dim:
            raise VAPModelMismatch(
                f"the expert (blocks {self.expert_blocks}, ffn {self.ffn_dim}, text {self.text_dim}) does not match the "
                f"base Wan model ({len(wan.blocks)} blocks, ffn {wan.ffn_dim}, text {wan.text_dim}). Use "
                "Wan2.1-I2V-14B-480P as the base.")
