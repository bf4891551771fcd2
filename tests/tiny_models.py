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
