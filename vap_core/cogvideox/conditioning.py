"""Target and reference inputs of the CogVideoX-I2V VAP model, built from ComfyUI objects (no node code here).

What the official ``CogVideoXImageToVideoMOTPipeline`` prepares (docs/OFFICIAL_MODEL.md#cogvideox-pipeline), in ComfyUI's layout:

* target image condition: the start image through the CogVideoX VAE, stored UNSCALED as core's
  ``concat_latent_image``; core ``CogVideoX.concat_cond`` multiplies by the latent format's 0.7 and zero-pads it
  to the video's latent frames, which is the official ``image_latents``.
* ``vap_ref_latent`` [1, 32, n*F, H/8, W/8]: per reference cat on channels of the clip's latents and its first
  frame's latents zero-padded to F frames, x0.7; references concatenated on frames (``cog_apply``).
* ``vap_ref_context`` [1, 226*n, D]: the captions' T5 states (226 tokens each, padding not zeroed), concatenated.

The official pipeline SAMPLES every latent from the VAE posterior (``latent_dist.sample(generator)``) and draws
those samples and the initial noise from ONE generator: image eps, noise, every reference clip's eps, every
reference first frame's eps (``official_rng``). ``latent_mode="sample"`` replays that stream from ``seed`` (a CPU
generator, as the official call with ``generator=torch.Generator('cpu').manual_seed(seed)``) and takes the eps
numbers; the noise numbers in between are left to the sampler's noise node ('VAP Official Noise' with the same
seed gives them), so the whole graph reproduces the official random numbers exactly. ``"mode"`` uses the posterior
mean (deterministic). Every encode runs in the official frame chunks (``vae_official``), not VAE Encode's.

Two routes share this code: 'VAP CogVideoX Encode Reference' stores each reference's posteriors
(``encode_posteriors``, a ``vap_core.reference.CogReference``) and 'VAP CogVideoX Conditioning from Reference'
samples them here (``condition_encoded``); the deprecated one-node 'VAP CogVideoX Conditioning' does both
(``condition``). The draws happen in one place, so both give the same numbers.
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
from .official_rng import CogDraws, cog_draws
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


def references(reference_frames, ref_positive, extra: list[tuple],
               frames_input: str = "reference_frames") -> list[tuple]:
    """[(frames, caption conditioning, label)] of the connected references, both halves of each checked
    (``frames_input``: the name of the node's reference inputs, for the message)."""
    refs = [(reference_frames, ref_positive, "reference 1")]
    for i, (frames, caption) in enumerate(extra, start=2):
        if frames is None and caption is None:
            continue
        if frames is None or caption is None:
            missing = f"{frames_input}_{i}" if frames is None else f"ref_positive_{i}"
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

def latent_shape(batch_size: int, length: int, width: int, height: int) -> tuple[int, ...]:
    """The target latent [B, 16, (length-1)/4+1, H/8, W/8] in ComfyUI's layout."""
    return (batch_size, LATENT_CHANNELS, (length - 1) // 4 + 1, height // 8, width // 8)


def draws_for(latent_mode: str, seed: int, target_shape, references: int, device: str = "cpu") -> CogDraws | None:
    """The official stream's numbers for ``references`` references of the target's frame count (every
    reference has the target's length), or None for ``latent_mode`` mode. Any node that encodes part of the
    conditioning replays the same stream from the same seed (``official_rng``)."""
    if latent_mode != "sample":
        return None
    return cog_draws(seed, target_shape, [target_shape[2]] * references, device=device)


def encode(vae, frames: torch.Tensor, eps: torch.Tensor | None) -> torch.Tensor:
    """Unscaled VAE latents [1, 16, f, H/8, W/8] of IMAGE ``frames``: the posterior mean (``eps`` None) or the
    official posterior sample (``sample``), encoded in the official frame chunks."""
    mean, logvar = posterior(vae, frames)
    return sample(mean, logvar, eps)


def sample(mean: torch.Tensor, logvar: torch.Tensor, eps: torch.Tensor | None) -> torch.Tensor:
    """``mean`` (``eps`` None) or the official posterior sample ``mean + exp(0.5 * clamp(logvar, -30, 20)) * eps``
    (diffusers DiagonalGaussianDistribution)."""
    if eps is None:
        return mean
    if tuple(eps.shape) != tuple(mean.shape):
        raise RuntimeError(f"VAP: the official random stream was replayed for latents {tuple(eps.shape)} but the VAE "
                           f"gave {tuple(mean.shape)} (a bug: please report it).")
    std = torch.exp(0.5 * logvar.clamp(-30.0, 20.0))
    return mean + std * eps.to(mean.device)


def pad_frames(latent: torch.Tensor, frames: int) -> torch.Tensor:
    """Zero-pad [B, C, f, H, W] to ``frames`` latent frames (the official first-frame condition layout)."""
    return torch.nn.functional.pad(latent, (0, 0, 0, 0, 0, frames - latent.shape[2]))


@torch.no_grad()
def reference_latents(vae, clips: list[torch.Tensor], draws: CogDraws | None) -> torch.Tensor:
    """The references in model space, [1, 32, n*F, H/8, W/8] (``latents_of_references``) of IMAGE clips already at
    the target size."""
    return latents_of_references([encode_posteriors(vae, frames) for frames in clips], draws)


@torch.no_grad()
def encode_posteriors(vae, frames: torch.Tensor):
    """A ``CogReference``: the posteriors of the clip and of its first frame (the two VAE encodes of a reference;
    deterministic, so the official order of the random draws is kept by ``latents_of_references`` alone)."""
    from ..reference import CogReference
    clip_mean, clip_logvar = posterior(vae, frames)
    first_mean, first_logvar = posterior(vae, frames[:1])
    return CogReference(clip_mean=clip_mean, clip_logvar=clip_logvar, first_mean=first_mean,
                        first_logvar=first_logvar, frames=int(frames.shape[0]), width=int(frames.shape[2]),
                        height=int(frames.shape[1]))


def latents_of_references(references, draws: CogDraws | None) -> torch.Tensor:
    """[1, 32, n*F, H/8, W/8]: per reference cat(clip latents, first-frame latents zero-padded) on channels x0.7,
    references on frames. ``draws`` (the official stream) gives every clip, then every first frame, its own eps;
    None: the posterior means."""
    latents = [sample(r.clip_mean, r.clip_logvar, draws.clip_eps[i] if draws else None)
               for i, r in enumerate(references)]
    firsts = [sample(r.first_mean, r.first_logvar, draws.first_eps[i] if draws else None)
              for i, r in enumerate(references)]
    return torch.cat([torch.cat([clip, pad_frames(first, clip.shape[2]).to(clip.device)], dim=1)
                      for clip, first in zip(latents, firsts)], dim=2) * latent_scale()


@torch.no_grad()
def image_latent(vae, start_image: torch.Tensor, width: int, height: int, draws: CogDraws | None) -> torch.Tensor:
    """The start image's unscaled latent [1, 16, 1, H/8, W/8] (core's ``concat_latent_image``)."""
    return encode(vae, fit_image(start_image, width, height), draws.image_eps if draws else None)


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
              latent_mode="sample", seed=0, ref_negative=None, rng_device="cpu"):
    """(positive, negative, latent dict) for CogVideoX-I2V VAP. Call ``validate`` first."""
    encoded = [encode_posteriors(vae, fit_reference_frames(frames, width, height)) for frames, _, _ in refs]
    return condition_encoded(positive, negative, vae, width, height, length, batch_size, start_image,
                             [(r, caption, label) for r, (_, caption, label) in zip(encoded, refs)],
                             latent_mode, seed, ref_negative, rng_device)


def condition_encoded(positive, negative, vae, width, height, length, batch_size, start_image, refs,
                      latent_mode="sample", seed=0, ref_negative=None, rng_device="cpu"):
    """``condition`` with the references already encoded: ``refs`` = [(CogReference, caption, label)]. Shared by
    'VAP CogVideoX Conditioning' and 'VAP CogVideoX Conditioning from Reference' (the same numbers)."""
    n = len(refs)
    shape = latent_shape(batch_size, length, width, height)
    draws = draws_for(latent_mode, seed, shape, n, rng_device)
    image = image_latent(vae, start_image, width, height, draws)
    ref_latent = latents_of_references([r for r, _, _ in refs], draws)
    pos_context = torch.cat([caption_states(caption, f"the caption of {label}") for _, caption, label in refs], dim=1)
    positive = attach(fit_target(positive, "the prompt"), image, ref_latent, n, lambda states: pos_context)
    negative = attach(fit_target(negative, "the negative prompt"), image, ref_latent, n,
                      negative_reference_context(ref_negative, n))
    samples = torch.zeros(shape, device=comfy.model_management.intermediate_device())
    return positive, negative, {"samples": samples}


# ------------------------------------------------------------------- encoded reference (VAP_REFERENCE)

@torch.no_grad()
def encode_reference(vae, reference_frames: torch.Tensor):
    """The ``VAP_REFERENCE`` of 'VAP CogVideoX Encode Reference': the posteriors at the clip's own size."""
    check_vae(vae)
    wan_conditioning.check_encode_frames(reference_frames, family="CogVideoX", trained="720x480")
    return encode_posteriors(vae, reference_frames[..., :3])


def encoded_references(reference, ref_positive, extra: list[tuple]) -> list[tuple]:
    """[(CogReference, caption, label)] of the connected references; all of one size and length (the video's)."""
    from ..reference import check_family
    refs = references(reference, ref_positive, extra, frames_input="reference")
    refs = [(check_family(r, "cogvideox", f"reference_{i + 1}" if i else "reference"), c, label)
            for i, (r, c, label) in enumerate(refs)]
    first = refs[0][0]
    for r, _, label in refs[1:]:
        if (r.frames, r.width, r.height) != (first.frames, first.width, first.height):
            raise VAPInputError(
                f"{label} is {r.frames} frames of {r.width}x{r.height} but reference 1 is {first.frames} frames of "
                f"{first.width}x{first.height}: CogVideoX VAP needs every reference at the video's size and length. "
                "Set the same num_frames, width and height on their 'Load VAP Reference Video' nodes.")
    return refs


def validate_encoded(positive, negative, vae, start_image, refs, latent_mode, ref_negative=None):
    """Every user-fixable problem of 'VAP CogVideoX Conditioning from Reference' (``refs`` from
    ``encoded_references``); the size and length are the references'."""
    first = refs[0][0]
    validate(positive, negative, vae, first.width, first.height, first.frames, start_image, [], latent_mode,
             ref_negative)
    for _, caption, label in refs:
        caption_states(caption, f"the caption of {label}")
