"""Attach a CogVideoX VAP expert to a ComfyUI CogVideoX ``ModelPatcher`` without touching the base model.

Same design as the Wan variant (``wan_apply``): the expert lives in its own ModelPatcher registered with
``set_additional_models`` and the MoT forward is a ``DIFFUSION_MODEL`` wrapper; neither sits in
``model_options``, so later ``clone()``s share the expert weights. Without reference conds the wrapper hands
the call straight to the base model: the output is bit-identical to the plain base.
"""
from __future__ import annotations

import torch

from . import mot as cog_mot
from ..formats.checkpoint import COG
from .expert import CogVAPExpert, expert_config, native_cogvideox
from ..conds import REF_CONTEXT, REF_COUNT, REF_LATENT, WITHOUT_REFERENCE
from ..errors import VAPInputError, VAPModelMismatch
from ..expert.context_windows import in_context_window
from ..expert.patching import WRAPPER_KEY, ExpertWrapper, VAPExpert, attach, build_expert  # noqa: F401

# the conditioning entries that carry CogVideoX references: per reference cat(clean latents, first-frame image
# latents), the n reference captions' T5 states concatenated, and (optional) n
REF_KEYS = (REF_LATENT, REF_CONTEXT, REF_COUNT)


def build_cog_expert(sd: dict[str, torch.Tensor], metadata: dict[str, str], source: str = "") -> VAPExpert:
    native_cogvideox()  # clear error on a host without native CogVideoX, before anything is built
    arch = CogVAPExpert.config_from_state_dict(sd, expert_config(metadata))
    return build_expert(CogVAPExpert, arch, sd, COG, source)


class CogVAPWrapper(ExpertWrapper):
    """DIFFUSION_MODEL wrapper running the MoT forward when the conds carry a reference."""

    def forward(self, original, cog, x, timestep, context, ofs=None, transformer_options=None, **kwargs):
        """The innermost call of the DIFFUSION_MODEL chain: the MoT forward when the conds carry a reference, else
        the native ``original`` (the plain base)."""
        if kwargs.get(REF_LATENT) is None:
            if kwargs.pop(WITHOUT_REFERENCE, None) is not None:
                # the reference guider's pass without the reference: the official base alone (its RoPE), as
                # outside the active range below, so cond and cond-without-reference differ by the reference only
                return cog_mot.vap_forward(cog, self.expert_patcher_for(cog).model, x, timestep, context, None, None,
                                           transformer_options if transformer_options is not None else {})
            return original(x, timestep, context, ofs, transformer_options, **kwargs)
        if kwargs.get(REF_CONTEXT) is None:
            raise VAPModelMismatch(f"the conditioning carries '{REF_LATENT}' but no '{REF_CONTEXT}' (the reference "
                                   "captions): encode the reference with the VAP CogVideoX conditioning node.")
        if transformer_options is None:
            transformer_options = {}
        if in_context_window(transformer_options):
            raise VAPInputError(
                "CogVideoX VAP cannot run under context windows: the model splits its reference stream into "
                "references of exactly the frames it is given for the target, so a window shorter than the reference "
                "cannot see the whole reference. Remove the context-window node from this CogVideoX graph; for "
                "videos longer than 49 frames use Wan VAP with 'WAN Context Windows' (docs/HOST_INTEGRATION.md).")
        expert = self.expert_patcher_for(cog).model
        if not self.active(transformer_options):
            # outside the active range: the official base (its RoPE), not ComfyUI's plain forward, which runs
            # CogVideoX-5b-I2V without RoPE (docs/COGVIDEOX.md), so the steps stay one model
            return cog_mot.vap_forward(cog, expert, x, timestep, context, None, None, transformer_options)
        count = kwargs.get(REF_COUNT)
        return cog_mot.vap_forward(cog, expert, x, timestep, context, kwargs[REF_LATENT].to(x.dtype),
                                   kwargs[REF_CONTEXT].to(x.dtype), transformer_options,
                                   num_refs=None if count is None else int(count))


def apply_expert(model, expert: VAPExpert, start: float = 0.0, end: float = 1.0):
    """A clone of ``model`` (a CogVideoX ModelPatcher) that runs VAP wherever the conds carry a reference.

    ``start``/``end``: fraction of the sampling schedule in which the expert is active (outside it the
    model is the plain base; default: the whole schedule, as the official pipeline)."""
    if expert.variant != COG:
        raise VAPModelMismatch(
            f"this is a {expert.variant} VAP expert but the apply node got a CogVideoX model path; use the Wan "
            "expert (Video-As-Prompt-Wan2.1-14B) with a Wan2.1 base, or a CogVideoX expert with CogVideoX-5b-I2V.")
    native_cogvideox()
    expert.module.check_fits(model.model.diffusion_model)
    return attach(model, expert, CogVAPWrapper(expert.patcher, start, end))
