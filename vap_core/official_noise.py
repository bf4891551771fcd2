"""The official pipelines' random numbers, replayed from a seed (host-free: torch only).

Both official pipelines take ``generator=torch.Generator(device).manual_seed(seed)``; the demo scripts pass no
generator but seed torch globally and run on the GPU, which draws from the CUDA default generator in the same order
(docs/OFFICIAL_MODEL.md#random-numbers). A torch stream depends on the device it is drawn on (CPU and CUDA
generators give different numbers for one seed) and, on CUDA, the dtype only rounds the same numbers; so a replay
names both. ``device="cpu"`` works everywhere; ``"cuda"`` needs an NVIDIA GPU (there is no CPU emulation of it).
"""
from __future__ import annotations

import torch

from .errors import VAPInputError

DEVICES = ("cpu", "cuda")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def generator(seed: int, device: str = "cpu") -> torch.Generator:
    """A fresh generator seeded like the official call (``torch.Generator(device).manual_seed(seed)``)."""
    if device not in DEVICES:
        raise VAPInputError(f"noise device must be one of {DEVICES}, got {device!r}.")
    if device == "cuda" and not torch.cuda.is_available():
        raise VAPInputError("noise device 'cuda' replays the official GPU random stream, which only an NVIDIA GPU "
                            "can draw (CPU and CUDA generators give different numbers for one seed): run on a "
                            "CUDA machine, or pick device 'cpu' (the official pipeline called with "
                            "generator=torch.Generator('cpu').manual_seed(seed)).")
    return torch.Generator(device=device).manual_seed(int(seed))


def draw(gen: torch.Generator, shape, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``randn(shape)`` from ``gen`` on its device in ``dtype`` (diffusers ``randn_tensor`` with a generator),
    returned as float32 on the CPU."""
    return torch.randn(tuple(shape), generator=gen, device=gen.device, dtype=dtype).to("cpu", torch.float32)


def wan_noise(seed: int, latent_shape, device: str = "cpu", dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The official Wan2.1 VAP initial noise for a ComfyUI latent [B, 16, F, h, w]: the generator's only draw,
    ``randn([B, 16, F, h, w])`` in ComfyUI's own layout (on the CPU in float32 this is exactly
    ``comfy.sample.prepare_noise(latent, seed)``)."""
    return draw(generator(seed, device), latent_shape, dtype)


VARIANTS = ("wan2.1", "cogvideox")


class OfficialNoise:
    """A NOISE for SamplerCustomAdvanced: the official pipeline's initial noise for ``seed`` (core's
    ``Noise_RandomNoise`` interface: ``seed`` + ``generate_noise(latent dict)``)."""

    def __init__(self, seed: int, variant: str, device: str = "cpu", dtype: str = "float32"):
        if variant not in VARIANTS:
            raise VAPInputError(f"variant must be one of {VARIANTS}, got {variant!r}.")
        if dtype not in DTYPES:
            raise VAPInputError(f"dtype must be one of {tuple(DTYPES)}, got {dtype!r}.")
        generator(seed, device)   # a missing GPU is reported when the node runs, not mid-sampling
        self.seed, self.variant, self.device, self.dtype = int(seed), variant, device, DTYPES[dtype]

    def generate_noise(self, input_latent: dict) -> torch.Tensor:
        latent = input_latent["samples"]
        if getattr(latent, "is_nested", False) or latent.ndim != 5:
            raise VAPInputError(f"'VAP Official Noise' draws video noise [B, 16, F, h, w]; this latent has shape "
                                f"{tuple(getattr(latent, 'shape', ()))}: connect the latent of the VAP conditioning node.")
        if "batch_index" in input_latent:
            raise VAPInputError("'VAP Official Noise' draws one official noise for the whole batch, but this latent "
                                "carries a batch_index (Latent From Batch / Repeat Latent Batch): sample the whole "
                                "batch, or use core 'RandomNoise' for per-index noise.")
        if self.variant == "cogvideox":
            from .cogvideox.official_rng import cog_noise
            noise = cog_noise(self.seed, latent.shape, self.device, self.dtype)
        else:
            noise = wan_noise(self.seed, latent.shape, self.device, self.dtype)
        return noise.to(dtype=latent.dtype)
