"""Frame chunks of the official CogVideoX VAE (host-free: plain integers).

The CogVideoX VAE is causal in time and runs in frame chunks: GroupNorm statistics are taken per chunk and a
causal cache carries the last frames of every convolution into the next chunk, so WHERE the chunks start changes
the numbers (docs/COGVIDEOX.md#vae-frame-chunks). The official (diffusers) VAE encodes pixel frames
``[0 : 8 + T % 8]`` first, then 8 at a time, and decodes latent frames ``[0 : 2 + f % 2]`` first, then 2 at a time.
ComfyUI 0.25's own encode puts the remainder in a chunk of its own first ([0:1] then [1:9] for 9 frames), which
moves a 9-frame clip's posterior mean by up to ~2.7 on random weights.
"""
from __future__ import annotations

ENCODE_FRAMES = 8   # diffusers AutoencoderKLCogVideoX.num_sample_frames_batch_size
DECODE_FRAMES = 2   # diffusers AutoencoderKLCogVideoX.num_latent_frames_batch_size


def official_chunks(frames: int, step: int) -> list[tuple[int, int]]:
    """[(start, end)] of the official chunk loop over ``frames`` frames: ``max(frames // step, 1)`` chunks, the
    first one ``step + frames % step`` long, then ``step`` at a time (ends clipped to ``frames``)."""
    if frames < 1:
        raise ValueError(f"cannot chunk {frames} frames")
    rest = frames % step
    bounds = []
    for i in range(max(frames // step, 1)):
        start = step * i + (0 if i == 0 else rest)
        bounds.append((start, min(step * (i + 1) + rest, frames)))
    return bounds


def encode_chunks(frames: int) -> list[tuple[int, int]]:
    """Pixel-frame chunks of the official encode (9 or 13 frames: one chunk; 49: [0:9], [9:17], ..., [41:49])."""
    return official_chunks(frames, ENCODE_FRAMES)


def decode_chunks(latent_frames: int) -> list[tuple[int, int]]:
    """Latent-frame chunks of the official decode (13 latents: [0:3], [3:5], ..., [11:13])."""
    return official_chunks(latent_frames, DECODE_FRAMES)
