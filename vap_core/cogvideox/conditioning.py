"""Target and reference inputs of the CogVideoX-I2V VAP model, built from ComfyUI objects (no node code here).

What the official ``CogVideoXImageToVideoMOTPipeline`` prepares (docs/OFFICIAL_MODEL.md#cogvideox-pipeline), in ComfyUI's layout:

* target image condition: the start image through the CogVideoX VAE, stored UNSCALED as core's
  ``concat_latent_image``; core ``CogVideoX.concat_cond`` multiplies by the latent format's 0.7 and zero-pads it
  to the video's latent frames, which is the official ``image_latents``.
* ``vap_ref_latent`` [1, 32, n*F, H/8, W/8]: per reference cat on channels of the clip's latents and its first
  frame's latents zero-padded to F frames, x0.7; references concatenated on frames (``cog_apply``).
* ``vap_ref_context`` [1, 226*n, D]: the captions' T5 states (226 tokens each, padding not zeroed), concatenated.

The official pipeline SAMPLES every latent from the VAE posterior (``latent_dist.sample(generator)``); ComfyUI's
VAE returns the posterior mean. ``latent_mode="sample"`` draws from the posterior with a seeded CPU generator
(order: start image, then per reference its clip and its first frame); ``"mode"`` uses the mean (deterministic,
what ComfyUI's VAE Encode gives). Neither reproduces the official random numbers bit for bit: torch's
generator streams differ by device and the official draw interleaves the sampling noise.
"""
from __future__ import annotations

import logging

import torch

import comfy.conds
import comfy.latent_formats
import comfy.model_management
import node_helpers

from .apply import REF_CONTEXT, REF_COUNT, REF_KEYS, REF_LATENT
from .mot import MAX_REFERENCES
from .vae_official import posterior
from ..errors import VAPInputError
from ..wan import conditioning as wan_conditioning
from ..wan.conditioning import check_reference_frames, check_size, fit_reference_frames

TEXT_TOKENS = 226                 # max_sequence_length of the official pipeline (= ComfyUI's cogvideox T5 padding)
LATENT_CHANNELS = 16
LATENT_MODES = ("sample", "mode")
COG_VAE_CLASS = "AutoencoderKLCogVideoX"


def latent_scale() -> float:
    """The CogVideoX-5B VAE scaling factor (0.7), from ComfyUI's own latent format."""
    return comfy.latent_formats.CogVideoX1_5().scale_factor


# ----------------------------------------------------------------------------------- validation

def check_vae(vae) -> None:
    if type(getattr(vae, "first_stage_model", None)).__name__ != COG_VAE_CLASS:
        found = type(getattr(vae, "first_stage_model", None)).__name__
        raise VAPInputError(
            f"the connected VAE is not the CogVideoX VAE (got {found}): load the CogVideoX-5b-I2V VAE "
            "(e.g. cogvideox_5b_vae.safetensors, the 'vae' folder of the VAP CogVideoX release) with 'Load VAE'. "
            "A Wan VAE has the same latent size but a different latent space.")


def check_no_reference(conditioning, name: str) -> None:
    wan_conditioning.check_no_reference(conditioning, name, REF_KEYS, f"add up to {MAX_REFERENCES} references on one "
                                        "'VAP CogVideoX Conditioning' node instead.")


def caption_states(conditioning, name: str) -> torch.Tensor:
    """The [1, 226, D] T5 states of a conditioning holding exactly one caption."""
    states = wan_conditioning.single_text_states(conditioning, name, "each reference takes exactly one caption")
    return fit_caption(states, name)


def fit_caption(states: torch.Tensor, name: str) -> torch.Tensor:
    """T5 states [1, L, D] as the model takes them: exactly 226 tokens (longer ones cut, with a warning)."""
    return fit_text_states(states, name)[:1]


def fit_text_states(states: torch.Tensor, name: str) -> torch.Tensor:
    """T5 states [B, L, D] cut to the official 226 tokens (with a warning), for a caption or the target prompts:
    the model's joint attention splits text from video at 226 tokens per stream, so a longer prompt must not
    reach sampling (the official pipeline truncates at ``max_sequence_length`` 226)."""
    if states.ndim == 2:
        states = states.unsqueeze(0)
    length = states.shape[1]
    if length < TEXT_TOKENS:
        raise VAPInputError(
            f"{name} has {length} text tokens but CogVideoX takes T5 states padded to {TEXT_TOKENS} tokens: load "
            "the T5-XXL text encoder with 'Load CLIP' type 'cogvideox' (other types pad to 77 or 256).")
    if length > TEXT_TOKENS:
        logging.warning("VAP: %s has %d tokens; CogVideoX uses the first %d (the official pipeline truncates the "
                        "caption to %d tokens before encoding, so the kept states differ slightly).",
                        name, length, TEXT_TOKENS, TEXT_TOKENS)
    return states[:, :TEXT_TOKENS]


def fit_target(conditioning, name: str):
    """``conditioning`` with every entry's states at 226 tokens (shallow copies; long prompts cut, warned)."""
    return [[fit_text_states(states, name), d] for states, d in conditioning]


def references(reference_frames, ref_positive, extra: list[tuple]) -> list[tuple]:
    """[(frames, caption conditioning, label)] of the connected references, both halves of each checked."""
    refs = [(reference_frames, ref_positive, "reference 1")]
    for i, (frames, caption) in enumerate(extra, start=2):
        if frames is None and caption is None:
            continue
        if frames is None or caption is None:
            missing = f"reference_frames_{i}" if frames is None else f"ref_positive_{i}"
            raise VAPInputError(f"reference {i} needs both its frames and its caption: connect {missing} too, or "
                                f"disconnect both to use fewer references.")
        refs.append((frames, caption, f"reference {i}"))
    if len(refs) > MAX_REFERENCES:
        raise VAPInputError(f"{len(refs)} references given; CogVideoX VAP takes 1 to {MAX_REFERENCES}.")
    return refs


def validate(positive, negative, vae, width, height, length, start_image, refs, latent_mode, ref_negative=None):
    """Every user-fixable problem, before anything is encoded."""
    check_size(width, height, length, family="CogVideoX", trained="720x480")
    check_vae(vae)
    if start_image is None:
        raise VAPInputError("start_image is missing: connect the first frame of the video to generate (Load Image).")
    if latent_mode not in LATENT_MODES:
        raise VAPInputError(f"latent_mode must be one of {LATENT_MODES}, got {latent_mode!r}.")
    check_no_reference(positive, "positive")
    check_no_reference(negative, "negative")
    for conditioning, name in ((positive, "the prompt (positive)"), (negative, "the negative prompt")):
        for states, _ in conditioning:
            if (states.shape[-2] if states.ndim == 3 else states.shape[0]) < TEXT_TOKENS:
                fit_text_states(states, name)  # raises with the fix (the T5 'cogvideox' text encoder)
    for frames, caption, label in refs:
        check_reference_frames(frames, length)
        caption_states(caption, f"the caption of {label}")
    if ref_negative is not None:
        caption_states(ref_negative, "ref_negative")


# ------------------------------------------------------------------------------------------- math

class LatentDrawer:
    """Encodes frames to VAE latents (unscaled) by posterior mode or seeded posterior sample."""

    def __init__(self, vae, mode: str, seed: int):
        self.vae, self.mode = vae, mode
        self.generator = torch.Generator().manual_seed(int(seed)) if mode == "sample" else None

    def __call__(self, frames: torch.Tensor) -> torch.Tensor:
        mean, logvar = posterior(self.vae, frames)   # official frame chunks (vae_chunks), not VAE Encode's
        if self.mode == "mode":
            return mean
        std = torch.exp(0.5 * logvar.clamp(-30.0, 20.0))   # diffusers DiagonalGaussianDistribution
        noise = torch.randn(mean.shape, generator=self.generator, dtype=torch.float32)
        return mean + std * noise.to(mean.device)


def pad_frames(latent: torch.Tensor, frames: int) -> torch.Tensor:
    """Zero-pad [B, C, f, H, W] to ``frames`` latent frames (the official first-frame condition layout)."""
    return torch.nn.functional.pad(latent, (0, 0, 0, 0, 0, frames - latent.shape[2]))


@torch.no_grad()
def reference_latent(draw: LatentDrawer, frames: torch.Tensor) -> torch.Tensor:
    """One reference in model space: [1, 32, F, H/8, W/8] = cat(clip latents, first-frame latents padded) x0.7."""
    clip = draw(frames)
    first = pad_frames(draw(frames[:1]), clip.shape[2])
    return torch.cat([clip, first.to(clip.device)], dim=1) * latent_scale()


def fit_image(image: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """The first frame of ``image`` at exactly width x height (Lanczos, stretched like the official pipeline)."""
    return fit_reference_frames(image[:1], width, height)


def attach(conditioning, image_latent, ref_latent, n, context_for):
    """Copy of ``conditioning`` with the target image condition and the reference on every entry."""
    out = node_helpers.conditioning_set_values(conditioning, {"concat_latent_image": image_latent})
    for states, d in out:
        d["model_conds"] = {
            **d.get("model_conds", {}),
            REF_LATENT: comfy.conds.CONDRegular(ref_latent),
            REF_CONTEXT: comfy.conds.CONDRegular(context_for(states)),
            REF_COUNT: comfy.conds.CONDConstant(n),
        }
    return out


def negative_reference_context(ref_negative, n: int):
    """The official negative pass gives every reference the negative prompt: ``ref_negative`` when connected,
    else each negative entry's own states (226 tokens), repeated once per reference."""
    if ref_negative is not None:
        fixed = caption_states(ref_negative, "ref_negative").repeat(1, n, 1)
        return lambda states: fixed
    return lambda states: fit_caption(states, "the negative prompt").repeat(1, n, 1)


def condition(positive, negative, vae, width, height, length, batch_size, start_image, refs,
              latent_mode="sample", seed=0, ref_negative=None):
    """(positive, negative, latent dict) for CogVideoX-I2V VAP. Call ``validate`` first."""
    draw = LatentDrawer(vae, latent_mode, seed)
    image_latent = draw(fit_image(start_image, width, height))
    ref_latent = torch.cat([reference_latent(draw, fit_reference_frames(frames, width, height))
                            for frames, _, _ in refs], dim=2)
    n = len(refs)
    pos_context = torch.cat([caption_states(caption, f"the caption of {label}") for _, caption, label in refs], dim=1)
    positive = attach(fit_target(positive, "the prompt"), image_latent, ref_latent, n, lambda states: pos_context)
    negative = attach(fit_target(negative, "the negative prompt"), image_latent, ref_latent, n,
                      negative_reference_context(ref_negative, n))
    latent_frames = (length - 1) // 4 + 1
    samples = torch.zeros([batch_size, LATENT_CHANNELS, latent_frames, height // 8, width // 8],
                          device=comfy.model_management.intermediate_device())
    return positive, negative, {"samples": samples}
