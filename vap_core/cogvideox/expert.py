"""The CogVideoX-I2V VAP expert as a ComfyUI-native module.

The expert blocks are ComfyUI's own ``CogVideoXBlock`` built with ``comfy.ops`` layers, so ComfyUI's memory
manager can load, offload and partially load the expert and LoRAs patch it like any model. Its state dict
uses native CogVideoX names (see ``cog_keys``).

ComfyUI's native CogVideoX ships with ComfyUI 0.25; on older hosts every entry point here raises an error
saying so instead of an ImportError (the module itself imports on any host, so the pack still loads).
"""
from __future__ import annotations

import importlib
import json
import re
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import VAPModelMismatch

COMFYUI_NEEDED = "ComfyUI >= 0.25"


def native_cogvideox():
    """ComfyUI's ``comfy.ldm.cogvideo.model``, or an error naming the ComfyUI version that has it."""
    try:
        return importlib.import_module("comfy.ldm.cogvideo.model")
    except ImportError:
        raise VAPModelMismatch(
            "this ComfyUI has no native CogVideoX model (comfy/ldm/cogvideo/model.py): the CogVideoX VAP expert "
            f"needs {COMFYUI_NEEDED}. Update ComfyUI, then load CogVideoX-5b-I2V with 'Load Diffusion Model'."
        ) from None


@dataclass(frozen=True)
class CogLayout:
    """The official config values the MoT forward needs beyond tensor shapes (positions, time embedding)."""
    sample_height: int = 60
    sample_width: int = 90
    sample_frames: int = 49
    temporal_compression_ratio: int = 4
    max_text_seq_length: int = 226
    spatial_interpolation_scale: float = 1.875
    temporal_interpolation_scale: float = 1.0
    use_rotary_positional_embeddings: bool = True
    use_learned_positional_embeddings: bool = True
    flip_sin_to_cos: bool = True
    freq_shift: int = 0

    @classmethod
    def from_config(cls, config: dict, learned: bool) -> "CogLayout":
        # an official single file may come without config.json: CogVideoX-5b-I2V values then
        kwargs = {k: config[k] for k in cls.__dataclass_fields__ if config.get(k) is not None}
        kwargs["use_learned_positional_embeddings"] = learned
        return cls(**kwargs)

    @property
    def stored_frames(self) -> int:
        """Latent frames covered by a learned positional table."""
        return (self.sample_frames - 1) // self.temporal_compression_ratio + 1


class CogRefPatchEmbed(nn.Module):
    """The reference patch embedding, with the parameter names of ComfyUI's ``CogVideoXPatchEmbed``.

    Not that class itself: its constructor computes a start-up sincos table (thrown away when a learned table
    is loaded) that fails for widths not divisible by 3. The forward lives in ``cog_mot.embed``."""

    def __init__(self, in_channels, dim, text_dim, patch_size, pos_len, bias=True, device=None, dtype=None, operations=None):
        super().__init__()
        self.patch_size = patch_size
        self.proj = operations.Conv2d(in_channels, dim, kernel_size=patch_size, stride=patch_size, bias=bias,
                                      device=device, dtype=dtype)
        self.text_proj = operations.Linear(text_dim, dim, device=device, dtype=dtype)
        if pos_len:
            self.register_buffer("pos_embedding", torch.empty(1, pos_len, dim, device=device, dtype=dtype), persistent=True)
        else:
            self.pos_embedding = None


class CogVAPExpert(nn.Module):
    """Reference-stream weights: patch embedding, time embedding and one block per expert position."""

    def __init__(self, dim, num_heads, head_dim, time_embed_dim, text_embed_dim, in_channels, patch_size, ff_inner_dim,
                 expert_blocks, pos_len, layout: CogLayout, patch_bias=True, norm_eps=1e-5, ref_embeddings=0,
                 effect_types=(), device=None, dtype=None, operations=None):
        super().__init__()
        cog = native_cogvideox()
        self.dim, self.num_heads, self.head_dim = dim, num_heads, head_dim
        self.time_embed_dim, self.text_embed_dim, self.in_channels = time_embed_dim, text_embed_dim, in_channels
        self.patch_size = patch_size
        self.layout = layout
        self.expert_blocks = sorted(int(i) for i in expert_blocks)
        self.patch_embed = CogRefPatchEmbed(in_channels, dim, text_embed_dim, patch_size, pos_len, patch_bias,
                                            device=device, dtype=dtype, operations=operations)
        self.time_embedding_linear_1 = operations.Linear(dim, time_embed_dim, device=device, dtype=dtype)
        self.time_embedding_act = nn.SiLU()
        self.time_embedding_linear_2 = operations.Linear(time_embed_dim, time_embed_dim, device=device, dtype=dtype)
        self.blocks = nn.ModuleDict({
            str(i): cog.CogVideoXBlock(dim, num_heads, head_dim, time_embed_dim, eps=norm_eps, ff_inner_dim=ff_inner_dim,
                                       device=device, dtype=dtype, operations=operations)
            for i in self.expert_blocks
        })
        # optional per-position reference embeddings (added to every token of a reference); effect embeddings
        # are only loaded: the official pipeline adds them only for explicit effect_types, which VAP never passes
        self.ref_embeddings = nn.ParameterDict({
            f"ref_{k}": nn.Parameter(torch.empty(1, 1, dim, device=device, dtype=dtype)) for k in range(ref_embeddings)
        }) if ref_embeddings else None
        self.effect_embeddings = nn.ParameterDict({
            name: nn.Parameter(torch.empty(1, 1, dim, device=device, dtype=dtype)) for name in effect_types
        }) if effect_types else None

    def block(self, index: int):
        return self.blocks[str(index)] if str(index) in self.blocks else None

    @classmethod
    def config_from_state_dict(cls, sd: dict, config: dict | None = None) -> dict:
        """Constructor arguments from tensor shapes plus the official config (positions, norms)."""
        config = config or {}
        proj = sd.get("patch_embed.proj.weight")
        if proj is None:
            raise VAPModelMismatch("the expert file has no 'patch_embed.proj.weight': it is incomplete; convert it again.")
        if proj.ndim != 4:
            raise VAPModelMismatch(
                "this expert belongs to a CogVideoX 1.5 model (3-D patches). VAP is released for CogVideoX-5b-I2V "
                "(1.0); CogVideoX 1.5 experts are not supported.")
        blocks = sorted({int(m[1]) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k))})
        if not blocks:
            raise VAPModelMismatch("the expert file has no expert blocks (blocks.N.*): it is incomplete; convert it again.")
        dim = int(proj.shape[0])
        head_dim = int(sd[f"blocks.{blocks[0]}.norm_q.weight"].shape[0])
        pos = sd.get("patch_embed.pos_embedding")
        return {
            "dim": dim,
            "num_heads": dim // head_dim,
            "head_dim": head_dim,
            "time_embed_dim": int(sd["time_embedding_linear_1.weight"].shape[0]),
            "text_embed_dim": int(sd["patch_embed.text_proj.weight"].shape[1]),
            "in_channels": int(proj.shape[1]),
            "patch_size": int(proj.shape[2]),
            "ff_inner_dim": int(sd[f"blocks.{blocks[0]}.ff_proj.weight"].shape[0]),
            "expert_blocks": blocks,
            "pos_len": int(pos.shape[1]) if pos is not None else 0,
            "layout": CogLayout.from_config(config, learned=pos is not None),
            "patch_bias": "patch_embed.proj.bias" in sd,
            "norm_eps": float(config.get("norm_eps", 1e-5)),
            "ref_embeddings": len([k for k in sd if k.startswith("ref_embeddings.")]),
            "effect_types": tuple(sorted(k.split(".", 1)[1] for k in sd if k.startswith("effect_embeddings."))),
        }

    def check_fits(self, cog) -> None:
        """Raise a clear error if this expert cannot run on the native CogVideoX model ``cog``."""
        name = type(cog).__name__
        if not all(hasattr(cog, a) for a in ("patch_embed", "time_embedding_linear_1", "norm_out", "blocks")):
            raise VAPModelMismatch(
                f"the VAP CogVideoX expert needs a CogVideoX-5b-I2V model, but MODEL is {name}. Load CogVideoX-5b-I2V "
                "with 'Load Diffusion Model' and connect it here (for a Wan model use the Wan VAP expert, "
                "Video-As-Prompt-Wan2.1-14B).")
        if getattr(cog, "patch_size_t", None) is not None:
            raise VAPModelMismatch(
                "this base is CogVideoX 1.5 (3-D patches); the VAP CogVideoX expert was trained on CogVideoX-5b-I2V "
                "(1.0). Load CogVideoX-5b-I2V as the base.")
        if cog.in_channels != self.in_channels:
            raise VAPModelMismatch(
                f"this base takes {cog.in_channels} latent channels (a text-to-video CogVideoX); VAP needs the "
                f"image-to-video base ({self.in_channels} channels): load CogVideoX-5b-I2V.")
        if cog.dim != self.dim or cog.attention_head_dim != self.head_dim:
            raise VAPModelMismatch(
                f"the expert is {self.dim} wide ({self.num_heads} heads of {self.head_dim}) but the base CogVideoX is "
                f"{cog.dim} wide ({cog.num_attention_heads} heads of {cog.attention_head_dim}) - e.g. CogVideoX-2b. "
                "Use the base the expert was trained on: CogVideoX-5b-I2V.")
        base_time = cog.time_embedding_linear_1.weight.shape[0]
        base_text = cog.patch_embed.text_proj.weight.shape[1]
        if self.expert_blocks[-1] >= len(cog.blocks) or base_time != self.time_embed_dim or base_text != self.text_embed_dim:
            raise VAPModelMismatch(
                f"the expert (blocks {self.expert_blocks}, time embedding {self.time_embed_dim}, text {self.text_embed_dim}) "
                f"does not match the base CogVideoX ({len(cog.blocks)} blocks, time embedding {base_time}, text "
                f"{base_text}). Use CogVideoX-5b-I2V as the base.")
        if getattr(cog, "ofs_embedding_linear_1", None) is not None:
            raise VAPModelMismatch(
                "this base has an 'ofs' embedding (CogVideoX 1.5 I2V); the VAP expert was trained on CogVideoX-5b-I2V. "
                "Load CogVideoX-5b-I2V as the base.")
        if self.layout.use_learned_positional_embeddings:
            table = getattr(cog.patch_embed, "pos_embedding", None)
            if table is None or not getattr(cog.patch_embed, "use_learned_positional_embeddings", False):
                raise VAPModelMismatch(
                    "the base CogVideoX was loaded without its learned positional table (patch_embed.pos_embedding), "
                    "which CogVideoX-5b-I2V needs. Load the original CogVideoX-5b-I2V transformer, or the base written "
                    "by 'python -m vap_core.convert ... --base'.")
            if tuple(table.shape) != tuple(self.patch_embed.pos_embedding.shape):
                raise VAPModelMismatch(
                    f"the base's learned positional table {tuple(table.shape)} does not match the expert's "
                    f"{tuple(self.patch_embed.pos_embedding.shape)}: the base has a different sample size than the "
                    "model the expert was trained on. Use CogVideoX-5b-I2V as the base.")


def expert_config(metadata: dict[str, str]) -> dict:
    """The official transformer config stored in an expert file's metadata (empty if none)."""
    try:
        return json.loads(metadata.get("vap_config", "{}") or "{}")
    except ValueError:
        return {}
