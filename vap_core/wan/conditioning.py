"""Reference-branch inputs of the Wan VAP model, built from ComfyUI objects (no node code here).

What the official ``WanImageToVideoMOTPipeline`` feeds the MoT transformer for the reference
(docs/OFFICIAL_MODEL.md#wan-mot-forward and #wan-pipeline), rebuilt from a VAE, the reference frames, a caption conditioning and a
CLIP-vision output:

* ``hidden_states_mot_ref`` [1, 36, F, H/8, W/8] = cat on channels of
  - the clean reference latents: VAE encode of the whole clip, posterior MODE, normalised
    ``(z - latents_mean) / latents_std`` (ComfyUI's ``Wan21.process_in``);
  - a 4-channel mask, latent frame 0 all ones, the rest zeros (1 = conditioned frame, exactly the
    target mask of the official pipeline);
  - the reference image condition: VAE encode of [ref frame 0, then N-1 zero frames in -1..1 space
    (0.5 grey in ComfyUI's 0..1 space)], mode, normalised.
* ``encoder_hidden_states_mot_ref`` [1, 512, D]: the caption's T5 states, zero beyond the prompt,
  exactly 512 tokens.
* ``encoder_hidden_states_image_mot_ref`` [1, 257, 1280]: CLIP penultimate states of ref frame 0.

Mask conventions (checked by tests/test_wan_conditioning.py against ComfyUI's own ``WAN21``):
``WanImageToVideo`` stores ``concat_mask`` = 0 on the start frame and ``WAN21.concat_cond`` turns it
into ``1 - concat_mask``, so inside the model the TARGET channels are [mask 1 on latent frame 0,
normalised image latents], the official layout. The reference channels never pass through
``concat_cond``; they are built here directly in that final (official) layout.
"""
from __future__ import annotations

import logging

import torch

import comfy.conds
import comfy.latent_formats
import comfy.utils

from ..errors import VAPInputError
from .apply import REF_CLIP, REF_CONTEXT, REF_KEYS, REF_LATENT

TEXT_TOKENS = 512          # the official pipeline's max_sequence_length; its attention split relies on it
MASK_CHANNELS = 4          # = the VAE's temporal compression
LATENT_CHANNELS = 16       # Wan 2.1 VAE
SPATIAL_MULTIPLE = 16      # VAE /8 and patch 2x2
TEMPORAL_STRIDE = 4


# ----------------------------------------------------------------------------------- validation

def check_size(width: int, height: int, length: int, family: str = "Wan", trained: str = "832x480") -> None:
    if width % SPATIAL_MULTIPLE or height % SPATIAL_MULTIPLE:
        raise VAPInputError(
            f"width and height must be multiples of 16 for {family} (got {width}x{height}): set them to e.g. "
            f"{_round16(width)}x{_round16(height)} (VAP {family} was trained at {trained}).")
    if length < 1 or (length - 1) % TEMPORAL_STRIDE:
        lower = max(1, (length - 1) // TEMPORAL_STRIDE * TEMPORAL_STRIDE + 1)
        raise VAPInputError(
            f"length must be 4k+1 frames for {family} (got {length}): use {lower} or {lower + TEMPORAL_STRIDE} "
            "(VAP was trained with 49).")


def _round16(v: int) -> int:
    return max(SPATIAL_MULTIPLE, int(round(v / SPATIAL_MULTIPLE)) * SPATIAL_MULTIPLE)


def check_vae(vae) -> None:
    if type(getattr(vae, "first_stage_model", None)).__name__ == "AutoencoderKLCogVideoX":
        raise VAPInputError(
            "the connected VAE is the CogVideoX VAE: the Wan VAP model needs wan_2.1_vae.safetensors (load it with "
            "'Load VAE'); for CogVideoX use 'VAP CogVideoX Conditioning' instead.")
    if getattr(vae, "latent_dim", None) != 3 or getattr(vae, "latent_channels", None) != LATENT_CHANNELS:
        raise VAPInputError(
            f"the connected VAE is not the Wan 2.1 video VAE (latent channels {getattr(vae, 'latent_channels', '?')}, "
            f"latent dims {getattr(vae, 'latent_dim', '?')}): load wan_2.1_vae.safetensors with 'Load VAE' "
            "(Video-As-Prompt Wan is built on Wan2.1-I2V-14B; the Wan 2.2 VAE does not fit).")


def check_reference_frames(frames: torch.Tensor, length: int, shorter_ok: bool = False) -> None:
    """``shorter_ok`` (Wan): a reference of fewer 4k+1 frames than the target is accepted. The Wan MoT gives the
    reference its own positions (before the target's), so its length is free; a long video sampled with context
    windows then shows every window the reference at the trained length (docs/HOST_INTEGRATION.md#context-windows).
    CogVideoX splits its reference stream by the target's frame count and needs them equal."""
    if frames is None:
        raise VAPInputError("reference_frames is missing: connect the IMAGE output of 'Load VAP Reference Video'.")
    if frames.ndim != 4 or frames.shape[-1] < 3:
        raise VAPInputError(
            f"reference_frames must be an IMAGE batch [frames, height, width, channels] (got shape "
            f"{tuple(frames.shape)}): connect the IMAGE output of 'Load VAP Reference Video'.")
    n = frames.shape[0]
    if shorter_ok and n < length:
        if (n - 1) % TEMPORAL_STRIDE:
            lower = (n - 1) // TEMPORAL_STRIDE * TEMPORAL_STRIDE + 1
            raise VAPInputError(
                f"the reference has {n} frames: a reference shorter than the video to generate (length {length}) "
                f"needs 4k+1 frames, e.g. num_frames = {lower} on the reference video node (or {length}, the "
                "video's length).")
        logging.info("VAP: the reference has %d frames, the video %d: every model call (every context window) sees "
                     "the whole reference.", n, length)
        return
    if n != length:
        raise VAPInputError(
            f"the reference has {frames.shape[0]} frames but the video to generate has length {length}: "
            f"set num_frames = {length} on the reference video node (VAP encodes the reference with exactly "
            "as many frames as the target" + (", or fewer for Wan" if shorter_ok else "") + ").")


def check_clip_vision(clip_vision_output, name: str) -> None:
    states = getattr(clip_vision_output, "penultimate_hidden_states", None) if clip_vision_output is not None else None
    if states is None:
        what = ("the first selected frame of the reference video (the first_frame output of 'Load VAP Reference Video')"
                if name == "clip_vision_reference"
                else "the start image")
        raise VAPInputError(
            f"{name} is missing: encode {what} with 'CLIP Vision Encode' (clip_vision_h.safetensors, crop: center) "
            f"and connect its output to {name}. The Wan VAP model needs CLIP features for both the target and "
            "the reference.")


def check_no_reference(conditioning, name: str, keys=REF_KEYS,
                       hint: str = "Wan VAP supports exactly one reference video.") -> None:
    """Refuse a conditioning that already went through a VAP conditioning node (Wan VAP takes exactly one
    reference: the official code asserts num_mot_ref == 1)."""
    for _, d in conditioning:
        if any(k in d.get("model_conds", {}) for k in keys):
            raise VAPInputError(
                f"the {name} conditioning already carries a VAP reference (from another VAP conditioning node): "
                f"{hint} Connect the plain text conditioning (e.g. straight from 'CLIP Text Encode') instead of "
                "chaining two VAP conditioning nodes.")


def single_text_states(conditioning, name: str,
                       why: str = "Wan VAP takes exactly one reference with one caption") -> torch.Tensor:
    """The T5 states of a conditioning that holds exactly one caption."""
    if conditioning is None or len(conditioning) == 0:
        raise VAPInputError(f"{name} is empty: connect a 'CLIP Text Encode' of the reference caption.")
    if len(conditioning) != 1:
        raise VAPInputError(
            f"{name} holds {len(conditioning)} conditionings but {why}: encode a single caption with one "
            "'CLIP Text Encode' (no Conditioning Combine).")
    return conditioning[0][0]


# ------------------------------------------------------------------------------------------- math

def pad_text_states(states: torch.Tensor, tokens: int = TEXT_TOKENS) -> torch.Tensor:
    """[B, L, D] -> [B, tokens, D]: zero-padded (the official pipeline zeroes beyond the prompt) or truncated."""
    if states.ndim == 2:
        states = states.unsqueeze(0)
    length = states.shape[1]
    if length > tokens:
        logging.warning("VAP: reference caption has %d tokens; using the first %d like the official pipeline "
                        "(which truncates the prompt to %d tokens before encoding).", length, tokens, tokens)
        return states[:, :tokens]
    if length < tokens:
        pad = states.new_zeros((states.shape[0], tokens - length, states.shape[2]))
        return torch.cat([states, pad], dim=1)
    return states


def fit_target(conditioning, name: str):
    """``conditioning`` with every entry's T5 states cut to the official 512 tokens (a warning says so): the
    official pipeline truncates both prompts at ``max_sequence_length`` 512, and the expert blocks' text split
    relies on it. Shorter states are left as they are (the base pads to 512 itself). Shallow copies."""
    out = []
    for states, d in conditioning:
        if states.shape[-2] > TEXT_TOKENS:
            logging.warning("VAP: %s has %d tokens; using the first %d like the official pipeline (which "
                            "truncates the prompt to %d tokens before encoding).", name, states.shape[-2],
                            TEXT_TOKENS, TEXT_TOKENS)
            states = states[..., :TEXT_TOKENS, :]
        out.append([states, d])
    return out


def first_frame_mask(latent_frames: int, height: int, width: int, dtype=torch.float32, device=None) -> torch.Tensor:
    """[1, 4, F, h, w]: ones on latent frame 0, zeros elsewhere (official mask, 1 = conditioned)."""
    mask = torch.zeros((1, MASK_CHANNELS, latent_frames, height, width), dtype=dtype, device=device)
    mask[:, :, 0] = 1.0
    return mask


def encode_normalized(vae, frames: torch.Tensor) -> torch.Tensor:
    """ComfyUI IMAGE [T, H, W, 3] (0..1) -> normalised Wan latents [1, 16, F, H/8, W/8].

    ``comfy.sd.VAE.encode`` returns the Wan posterior mean (the mode) unnormalised; ``Wan21.process_in``
    applies ``(z - latents_mean) / latents_std`` as the official pipeline does."""
    latent = vae.encode(frames[..., :3])
    return comfy.latent_formats.Wan21().process_in(latent.float())


def image_condition_frames(first_frame: torch.Tensor, length: int) -> torch.Tensor:
    """[length, H, W, 3]: the frame, then grey (0.5 here = 0 in the VAE's -1..1 space) for the others."""
    video = torch.full((length,) + tuple(first_frame.shape), 0.5, dtype=first_frame.dtype, device=first_frame.device)
    video[0] = first_frame
    return video


def fit_reference_frames(frames: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """RGB frames at exactly width x height (the official pipeline stretches with Lanczos, no crop)."""
    frames = frames[..., :3]
    if frames.shape[1] != height or frames.shape[2] != width:
        logging.info("VAP: resizing the reference from %dx%d to %dx%d (Lanczos, stretched like the official "
                     "pipeline).", frames.shape[2], frames.shape[1], width, height)
        frames = comfy.utils.common_upscale(frames.movedim(-1, 1), width, height, "lanczos", "disabled").movedim(1, -1)
    return frames


@torch.no_grad()
def reference_latent(vae, frames: torch.Tensor) -> torch.Tensor:
    """Official ``hidden_states_mot_ref`` for one reference: [1, 36, F, H/8, W/8]."""
    clean = encode_normalized(vae, frames)
    condition = encode_normalized(vae, image_condition_frames(frames[0, ..., :3], frames.shape[0]))
    f, h, w = clean.shape[2:]
    mask = first_frame_mask(f, h, w, dtype=clean.dtype, device=clean.device)
    return torch.cat([clean, mask, condition.to(clean.device)], dim=1)


def reference_clip_features(clip_vision_output) -> torch.Tensor:
    """[1, 257, 1280]: penultimate CLIP states of the reference's first frame (a whole-clip encode is
    accepted: its first frame is used)."""
    return clip_vision_output.penultimate_hidden_states[:1]


def attach_reference(conditioning, ref_latent: torch.Tensor, ref_clip: torch.Tensor, ref_context_for):
    """Copy of ``conditioning`` with the reference under ``model_conds`` of every entry (shallow copies like
    ``node_helpers.conditioning_set_values``; the input dicts are not modified). ``ref_context_for(entry_states)``
    gives the [1, 512, D] reference text for an entry."""
    out = []
    for states, d in conditioning:
        d = d.copy()
        d["model_conds"] = {
            **d.get("model_conds", {}),
            REF_LATENT: comfy.conds.CONDRegular(ref_latent),
            REF_CONTEXT: comfy.conds.CONDRegular(ref_context_for(states)),
            REF_CLIP: comfy.conds.CONDRegular(ref_clip),
        }
        out.append([states, d])
    return out


def add_wan_reference(positive, negative, ref_positive, vae, reference_frames, clip_vision_reference,
                      width: int, height: int, ref_negative=None):
    """(positive, negative) carrying the official reference inputs. Call ``validate`` first.

    The official negative pass feeds the NEGATIVE prompt to the reference branch too
    (``negative_prompt_mot_ref``, by default the same string as the target negative): ``ref_negative``
    when given, else each negative entry's own text states."""
    frames = fit_reference_frames(reference_frames, width, height)
    return attach_wan_reference(positive, negative, ref_positive, reference_latent(vae, frames),
                                reference_clip_features(clip_vision_reference), ref_negative)


def attach_wan_reference(positive, negative, ref_positive, ref_latent: torch.Tensor, ref_clip: torch.Tensor,
                         ref_negative=None):
    """(positive, negative) carrying an encoded reference (``reference_latent``, ``reference_clip_features``) and
    its captions: the part of ``add_wan_reference`` after the encode, shared with 'VAP Wan Conditioning from
    Reference' so both nodes build the same conditioning."""
    pos_context = pad_text_states(single_text_states(ref_positive, "ref_positive"))
    if ref_negative is not None:
        neg_context = pad_text_states(single_text_states(ref_negative, "ref_negative"))
        neg_for = lambda states: neg_context  # noqa: E731
    else:
        neg_for = pad_text_states
    positive = attach_reference(fit_target(positive, "the prompt"), ref_latent, ref_clip, lambda states: pos_context)
    negative = attach_reference(fit_target(negative, "the negative prompt"), ref_latent, ref_clip, neg_for)
    return positive, negative


def validate(positive, negative, ref_positive, vae, width, height, length, reference_frames,
             clip_vision_start_image, clip_vision_reference, ref_negative=None) -> None:
    """Every user-fixable problem, before anything is encoded."""
    check_size(width, height, length)
    check_vae(vae)
    check_reference_frames(reference_frames, length, shorter_ok=True)
    check_clip_vision(clip_vision_start_image, "clip_vision_start_image")
    check_clip_vision(clip_vision_reference, "clip_vision_reference")
    check_no_reference(positive, "positive")
    check_no_reference(negative, "negative")
    single_text_states(ref_positive, "ref_positive")
    if ref_negative is not None:
        single_text_states(ref_negative, "ref_negative")


# ------------------------------------------------------------------- encoded reference (VAP_REFERENCE)

def check_encode_frames(frames: torch.Tensor, family: str = "Wan", trained: str = "832x480") -> None:
    """The reference clip given to an encode node defines the video's size and (minimum) length: 4k+1 frames,
    sides multiples of 16. The fix is on 'Load VAP Reference Video' (num_frames, width, height)."""
    if frames is None:
        raise VAPInputError("reference_frames is missing: connect the IMAGE output of 'Load VAP Reference Video'.")
    if frames.ndim != 4 or frames.shape[-1] < 3:
        raise VAPInputError(
            f"reference_frames must be an IMAGE batch [frames, height, width, channels] (got shape "
            f"{tuple(frames.shape)}): connect the IMAGE output of 'Load VAP Reference Video'.")
    n, height, width = frames.shape[:3]
    if width % SPATIAL_MULTIPLE or height % SPATIAL_MULTIPLE or (n - 1) % TEMPORAL_STRIDE:
        lower = max(1, (n - 1) // TEMPORAL_STRIDE * TEMPORAL_STRIDE + 1)
        raise VAPInputError(
            f"the reference is {n} frames of {width}x{height}, but the video takes its size and length from it: "
            f"{family} needs 4k+1 frames and sides that are multiples of 16. Set num_frames = {lower} (or "
            f"{lower + TEMPORAL_STRIDE}) and width x height = {_round16(width)}x{_round16(height)} on 'Load VAP "
            f"Reference Video' (VAP {family} was trained with 49 frames at {trained}).")


@torch.no_grad()
def encode_reference(vae, reference_frames: torch.Tensor, clip_vision_reference):
    """The ``VAP_REFERENCE`` of 'VAP Wan Encode Reference': the reference at its own size (no resize)."""
    from ..reference import WanReference
    check_vae(vae)
    check_encode_frames(reference_frames)
    check_clip_vision(clip_vision_reference, "clip_vision_reference")
    frames = reference_frames[..., :3]
    n, height, width = frames.shape[:3]
    return WanReference(latent=reference_latent(vae, frames), clip=reference_clip_features(clip_vision_reference),
                        frames=int(n), width=int(width), height=int(height))


def fit_start_images(images: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """The start image(s) at exactly width x height, Lanczos-stretched like the official pipeline (what an
    'Upscale Image' lanczos/disabled node in front gives; an image already at that size is handed on as it is)."""
    images = images[..., :3]
    if images.shape[1] != height or images.shape[2] != width:
        images = comfy.utils.common_upscale(images.movedim(-1, 1), width, height, "lanczos", "disabled").movedim(1, -1)
    return images


def target_length(reference, extra_frames: int) -> int:
    """The video's length: the reference's frames plus ``extra_frames`` (a multiple of 4, so still 4k+1)."""
    if extra_frames < 0 or extra_frames % TEMPORAL_STRIDE:
        lower = max(0, extra_frames // TEMPORAL_STRIDE * TEMPORAL_STRIDE)
        raise VAPInputError(
            f"extra_frames must be a multiple of 4 (got {extra_frames}): use {lower} or {lower + TEMPORAL_STRIDE} "
            f"(the video is the reference's {reference.frames} frames plus extra_frames, and Wan needs 4k+1).")
    return reference.frames + extra_frames


def validate_from_reference(positive, negative, ref_positive, vae, reference, extra_frames: int,
                            clip_vision_start_image, ref_negative=None) -> None:
    """Every user-fixable problem of 'VAP Wan Conditioning from Reference'."""
    from ..reference import check_family
    check_family(reference, "wan")
    check_vae(vae)
    check_size(reference.width, reference.height, target_length(reference, extra_frames))
    check_clip_vision(clip_vision_start_image, "clip_vision_start_image")
    check_no_reference(positive, "positive")
    check_no_reference(negative, "negative")
    single_text_states(ref_positive, "ref_positive")
    if ref_negative is not None:
        single_text_states(ref_negative, "ref_negative")
