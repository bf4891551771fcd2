"""``VAP_REFERENCE``: what the model needs of one reference video, encoded once (host-free: torch only).

The 'VAP ... Encode Reference' nodes build these from the reference frames and a VAE; the 'VAP ... Conditioning from
Reference' nodes add captions and the target. Splitting the two lets ComfyUI's cache keep the VAE encodes when only
a prompt changes (the encode node's inputs did not change), and the size and length of the video come from the
reference (one place), not from widgets that must agree with it.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .errors import VAPInputError


@dataclass(frozen=True, eq=False)
class WanReference:
    """Wan: ``latent`` = official ``hidden_states_mot_ref`` [1, 36, F, H/8, W/8] (clean latents, first-frame mask,
    first-frame image condition, normalised); ``clip`` = CLIP-H penultimate states of its first frame [1, 257, 1280]."""
    latent: torch.Tensor
    clip: torch.Tensor
    frames: int
    width: int
    height: int
    family = "wan"


@dataclass(frozen=True, eq=False)
class CogReference:
    """CogVideoX: the VAE posteriors (mean, unclamped log-variance; unscaled, float32) of the clip [1, 16, F, H/8, W/8]
    and of its first frame [1, 16, 1, H/8, W/8]. The posterior SAMPLE is drawn by the conditioning node, which has the
    seed, the target and every reference: the official pipeline draws all of them from one stream, in one order."""
    clip_mean: torch.Tensor
    clip_logvar: torch.Tensor
    first_mean: torch.Tensor
    first_logvar: torch.Tensor
    frames: int
    width: int
    height: int
    family = "cogvideox"


ENCODERS = {"wan": "VAP Wan Encode Reference", "cogvideox": "VAP CogVideoX Encode Reference"}


def check_family(reference, family: str, name: str = "reference"):
    """The reference, when it was encoded for ``family``; else an error naming the node to use."""
    if reference is None:
        raise VAPInputError(f"{name} is missing: connect the output of '{ENCODERS[family]}'.")
    found = getattr(reference, "family", None)
    if found != family:
        what = f"by '{ENCODERS[found]}'" if found in ENCODERS else f"as {type(reference).__name__}"
        raise VAPInputError(f"{name} was encoded {what}, but this node needs '{ENCODERS[family]}' (with the "
                            f"{'Wan 2.1' if family == 'wan' else 'CogVideoX'} VAE) in front of it.")
    return reference
