"""The CogVideoX VAE run in the official frame chunks, through ComfyUI's own VAE modules.

ComfyUI's ``AutoencoderKLCogVideoX`` encoder and decoder ARE the official networks (same weights, same layers):
fed the official chunks with the causal cache carried they give the official posterior bit for bit. Only the
chunk loop differs (``vae_chunks``), so this module drives ComfyUI's ``encoder`` / ``decoder`` with the official
bounds instead of calling ``AutoencoderKLCogVideoX.encode`` / ``decode``.
"""
from __future__ import annotations

import torch

import comfy.model_management

from .vae_chunks import decode_chunks, encode_chunks


def _pixels(vae, frames: torch.Tensor) -> torch.Tensor:
    """IMAGE [T, H, W, 3] -> [1, 3, T, H, W] in the VAE's input range (as ``comfy.sd.VAE.encode`` prepares it)."""
    pixels = vae.vae_encode_crop_pixels(frames[..., :3]).movedim(-1, 1)
    return vae.process_input(pixels.movedim(1, 0).unsqueeze(0))


@torch.no_grad()
def posterior(vae, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, logvar) [1, 16, f, H/8, W/8] of the VAE posterior of IMAGE ``frames`` [T, H, W, 3], float32,
    encoded in the official chunks (``encode_chunks``) with the causal cache carried across them. The log-variance
    is returned unclamped (the official sample clamps it to [-30, 20])."""
    pixels = _pixels(vae, frames)
    comfy.model_management.load_models_gpu([vae.patcher],
                                           memory_required=vae.memory_used_encode(pixels.shape, vae.vae_dtype))
    encoder = vae.first_stage_model.encoder
    x = pixels.to(device=vae.device, dtype=vae.vae_dtype)
    cache, chunks = None, []
    for start, end in encode_chunks(x.shape[2]):
        chunk, cache = encoder(x[:, :, start:end], conv_cache=cache)
        chunks.append(chunk.float())
    mean, logvar = torch.cat(chunks, dim=2).chunk(2, dim=1)
    return mean.to(vae.output_device), logvar.to(vae.output_device)


@torch.no_grad()
def decode(vae, latent: torch.Tensor) -> torch.Tensor:
    """IMAGE [B*T, H, W, 3] of unscaled VAE latents [B, 16, f, h, w], decoded in the official chunks
    (``decode_chunks``, cache carried) and mapped to 0..1 like ComfyUI's VAE Decode (``process_output``)."""
    comfy.model_management.load_models_gpu([vae.patcher],
                                           memory_required=vae.memory_used_decode(latent.shape, vae.vae_dtype))
    decoder = vae.first_stage_model.decoder
    videos = []
    for sample in latent:
        z = sample.unsqueeze(0).to(device=vae.device, dtype=vae.vae_dtype)
        cache, chunks = None, []
        for start, end in decode_chunks(z.shape[2]):
            chunk, cache = decoder(z[:, :, start:end], conv_cache=cache)
            chunks.append(chunk.to(device=vae.output_device, dtype=torch.float32))
        videos.append(vae.process_output(torch.cat(chunks, dim=2)))
    # [B, 3, T, H, W] -> [B*T, H, W, 3] (VAE Decode's video IMAGE layout)
    return torch.cat(videos, dim=0).movedim(1, -1).flatten(0, 1)
