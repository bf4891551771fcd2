"""The ONE random stream of the official CogVideoX-I2V VAP pipeline, replayed from a seed (host-free: torch only).

The official pipeline draws every random number from one generator, in this order (docs/OFFICIAL_MODEL.md#random-numbers):

1. the eps of the start image's VAE posterior sample      [1, 16, 1, h, w]
2. the initial noise, official layout                    [B, F, 16, h, w]
3. the eps of every reference clip's posterior sample    [1, 16, F_i, h, w]   (reference 0, 1, ...)
4. the eps of every reference first frame's sample       [1, 16, 1, h, w]     (reference 0, 1, ...)

A ComfyUI graph splits this over several nodes (the conditioning encodes the image and the references, a NOISE node
gives the noise), so each node REPLAYS the stream from the seed and keeps its part: ``cog_draws`` is a pure function
of (seed, target latent shape, reference latent frame counts, device, dtype), cheap next to any VAE or transformer
call. Where every node uses the same seed the graph reproduces the official numbers exactly.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from ..official_noise import draw, generator


@dataclass(frozen=True)
class CogDraws:
    """The official draws, each float32 on the CPU; ``noise`` in ComfyUI's layout [B, 16, F, h, w]."""
    image_eps: torch.Tensor
    noise: torch.Tensor
    clip_eps: tuple[torch.Tensor, ...]
    first_eps: tuple[torch.Tensor, ...]


def cog_draws(seed: int, latent_shape: Sequence[int], reference_frames: Sequence[int] = (),
              device: str = "cpu", dtype: torch.dtype = torch.float32) -> CogDraws:
    """Replay the official stream for a ComfyUI latent ``latent_shape`` [B, C, F, h, w] and references whose clips
    have ``reference_frames`` latent frames each (none: the stream stops after the noise)."""
    batch, channels, frames, height, width = (int(v) for v in latent_shape)
    gen = generator(seed, device)
    image_eps = draw(gen, (1, channels, 1, height, width), dtype)
    noise = draw(gen, (batch, frames, channels, height, width), dtype).permute(0, 2, 1, 3, 4).contiguous()
    clip_eps = tuple(draw(gen, (1, channels, int(f), height, width), dtype) for f in reference_frames)
    first_eps = tuple(draw(gen, (1, channels, 1, height, width), dtype) for _ in reference_frames)
    return CogDraws(image_eps, noise, clip_eps, first_eps)


def cog_noise(seed: int, latent_shape: Sequence[int], device: str = "cpu",
              dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The official initial noise for a ComfyUI latent [B, 16, F, h, w] (after the start image's eps)."""
    return cog_draws(seed, latent_shape, (), device, dtype).noise
