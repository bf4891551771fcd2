"""Tiny seeded models in real layouts, for tests that go through ComfyUI's own loaders.

Import only after the host is on sys.path (the ``pack`` fixture), since these use ComfyUI's classes.
"""
from __future__ import annotations

import torch


def make_tiny_wan_vae_state_dict(dim: int = 8, seed: int = 0) -> dict[str, torch.Tensor]:
    """A small-width Wan 2.1 VAE state dict in ComfyUI's native layout (``comfy.ldm.wan.vae.WanVAE``).

    ComfyUI 0.25 recognises it as a Wan 2.1 VAE (``decoder.middle.0.residual.0.gamma`` without the 2.2
    keys) and reads its width from ``decoder.head.0.gamma``, so ``comfy.sd.VAE(sd=...)`` rebuilds the same
    model. Weights are seeded and scaled per fan-in, so activations stay O(1) through the network."""
    from comfy.ldm.wan.vae import WanVAE

    with torch.device("meta"):
        model = WanVAE(dim=dim, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
                       temperal_downsample=[False, True, True], image_channels=3, conv_out_channels=3, dropout=0.0)
    generator = torch.Generator().manual_seed(seed)
    sd = {}
    for name, tensor in sorted(model.state_dict().items()):
        shape = tuple(tensor.shape)
        if name.endswith("gamma"):
            value = 1 + 0.1 * torch.randn(shape, generator=generator)
        elif name.endswith("bias"):
            value = 0.02 * torch.randn(shape, generator=generator)
        else:
            fan_in = max(1, int(torch.tensor(shape[1:]).prod())) if len(shape) > 1 else shape[0]
            value = torch.randn(shape, generator=generator) / fan_in ** 0.5
        sd[name] = value.float().contiguous()
    return sd


def make_tiny_cog_vae_state_dict(seed: int = 0, dtype: torch.dtype = torch.float16) -> dict[str, torch.Tensor]:
    """A CogVideoX VAE state dict in ComfyUI's native layout (``comfy.ldm.cogvideo.vae.AutoencoderKLCogVideoX``).

    ComfyUI 0.25 recognises it by ``decoder.conv_in.conv.weight`` + ``decoder.mid_block.resnets.0.norm1.norm_layer.weight``
    and always builds the class at its default widths (128/256/256/512, 3 layers per block; only the latent channels,
    16, are read from the file), so this is the real size: 215.6M parameters, ~431 MB in fp16. Weights are seeded:
    norm weights ~1, biases small, convolutions N(0, 1/fan_in); the spatial-norm modulation of the decoder
    (``conv_y``/``conv_b``) starts near identity (scale ~1, shift ~0), so encode/decode outputs are finite, O(1)
    and depend on the input. At 64x48x9 on 2 CPU cores: encode ~13 s, decode ~26 s."""
    from comfy.ldm.cogvideo.vae import AutoencoderKLCogVideoX

    with torch.device("meta"):
        model = AutoencoderKLCogVideoX(latent_channels=16)
    generator = torch.Generator().manual_seed(seed)
    sd = {}
    for name, tensor in sorted(model.state_dict().items()):
        shape = tuple(tensor.shape)
        modulation = ".conv_y." in name or ".conv_b." in name
        if name.endswith("bias"):
            value = 0.02 * torch.randn(shape, generator=generator)
            if ".conv_y." in name:
                value = value + 1  # SpatialNorm3D: norm(f) * conv_y(z) + conv_b(z), scale ~1
        elif len(shape) == 1:  # GroupNorm weights
            value = 1 + 0.1 * torch.randn(shape, generator=generator)
        else:
            fan_in = max(1, int(torch.tensor(shape[1:]).prod()))
            value = torch.randn(shape, generator=generator) / fan_in ** 0.5
            if modulation:
                value = 0.1 * value
        sd[name] = value.to(dtype).contiguous()
    return sd
