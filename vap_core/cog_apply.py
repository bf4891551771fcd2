"""Attach a CogVideoX VAP expert to a ComfyUI CogVideoX ``ModelPatcher`` without touching the base model.

Same design as the Wan variant (``wan_apply``): the expert lives in its own ModelPatcher registered with
``set_additional_models`` and the MoT forward is a ``DIFFUSION_MODEL`` wrapper; neither sits in
``model_options``, so later ``clone()``s share the expert weights. Without reference conds the wrapper hands
the call straight to the base model: the output is bit-identical to the plain base.
"""
from __future__ import annotations

import torch

import comfy.model_management
import comfy.model_patcher
import comfy.ops
import comfy.patcher_extension
import comfy.utils

from . import cog_mot
from .checkpoint import COG
from .cog_expert import CogVAPExpert, expert_config, native_cogvideox
from .errors import VAPModelMismatch
# one VAP_EXPERT type for both variants (the loader and apply node dispatch on ``variant``)
from .wan_apply import VAPExpert, schedule_fraction

WRAPPER_KEY = "vap_expert"
# Conditioning entries (under ``model_conds``, on positive AND negative) that carry the reference to the model.
REF_LATENT = "vap_ref_latent"      # [B, 32, n*F, H, W]: per reference cat(clean latents, first-frame image latents)
REF_CONTEXT = "vap_ref_context"    # [B, n*226, 4096]: the n reference captions' T5 states, concatenated
REF_COUNT = "vap_num_refs"         # optional CONDConstant(int n); checked against the latent when present
REF_KEYS = (REF_LATENT, REF_CONTEXT, REF_COUNT)


def build_cog_expert(sd: dict[str, torch.Tensor], metadata: dict[str, str], source: str = "") -> VAPExpert:
    native_cogvideox()  # clear error on a host without native CogVideoX, before anything is built
    arch = CogVAPExpert.config_from_state_dict(sd, expert_config(metadata))
    dtype = comfy.utils.weight_dtype(sd)
    load_device = comfy.model_management.get_torch_device()
    offload_device = comfy.model_management.unet_offload_device()
    with torch.device("meta"):
        module = CogVAPExpert(**arch, dtype=dtype, operations=comfy.ops.manual_cast)
    patcher = comfy.model_patcher.CoreModelPatcher(module, load_device=load_device, offload_device=offload_device)
    # assign=True keeps each tensor's own dtype (fp8 matrices next to bf16 norms) and the file's storage
    missing, unexpected = module.load_state_dict(sd, strict=False, assign=True)
    if missing or unexpected:
        raise VAPModelMismatch(
            f"the expert file does not match the CogVideoX VAP layout (missing {missing[:4]}, unexpected {unexpected[:4]}). "
            "Convert the official checkpoint again with 'python -m vap_core.convert'.")
    module.to(offload_device)
    return VAPExpert(patcher, COG, arch["expert_blocks"], source)


class CogVAPWrapper:
    """DIFFUSION_MODEL wrapper running the MoT forward when the conds carry a reference."""

    def __init__(self, expert_patcher, start: float = 0.0, end: float = 1.0):
        self.expert_patcher = expert_patcher
        self.start, self.end = float(start), float(end)

    def __deepcopy__(self, memo):
        return self  # never duplicate the expert, whatever copies the options (HOST_NOTES 2.2)

    def active(self, transformer_options) -> bool:
        if self.start <= 0.0 and self.end >= 1.0:
            return True
        fraction = schedule_fraction(transformer_options or {})
        return fraction is None or self.start <= fraction <= self.end

    def __call__(self, executor, x, timestep, context, ofs=None, transformer_options=None, **kwargs):
        if kwargs.get(REF_LATENT) is None:
            return executor(x, timestep, context, ofs, transformer_options, **kwargs)
        if kwargs.get(REF_CONTEXT) is None:
            raise VAPModelMismatch(f"the conditioning carries '{REF_LATENT}' but no '{REF_CONTEXT}' (the reference "
                                   "captions): encode the reference with the VAP CogVideoX conditioning node.")
        if transformer_options is None:
            transformer_options = {}
        cog = executor.class_obj
        expert = self.expert_patcher.model
        if not self.active(transformer_options):
            # outside the active range: the official base (its RoPE), not ComfyUI's plain forward, which runs
            # CogVideoX-5b-I2V without RoPE (docs/COGVIDEOX.md), so the steps stay one model
            return cog_mot.vap_forward(cog, expert, x, timestep, context, None, None, transformer_options)
        count = kwargs.get(REF_COUNT)
        return cog_mot.vap_forward(cog, expert, x, timestep, context, kwargs[REF_LATENT].to(x.dtype),
                                   kwargs[REF_CONTEXT].to(x.dtype), transformer_options,
                                   num_refs=None if count is None else int(count))


def _extra_conds_shapes_with_reference(base_model):
    original = base_model.extra_conds_shapes

    def extra_conds_shapes(**kwargs):
        shapes = dict(original(**kwargs))
        ref = kwargs.get("model_conds", {}).get(REF_LATENT)
        if ref is not None:
            shapes[REF_LATENT] = list(ref.cond.shape)
        return shapes
    return extra_conds_shapes


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
    patched = model.clone()
    patched.set_additional_models(WRAPPER_KEY, [expert.patcher])
    patched.remove_wrappers_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, WRAPPER_KEY)
    patched.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, WRAPPER_KEY,
                                 CogVAPWrapper(expert.patcher, start, end))
    # the references add n times the target's tokens in expert blocks: let ComfyUI's memory estimate count them
    base_model = model.model
    conds = tuple(base_model.memory_usage_factor_conds)
    patched.add_object_patch("memory_usage_factor_conds", conds + ((REF_LATENT,) if REF_LATENT not in conds else ()))
    patched.add_object_patch("extra_conds_shapes", _extra_conds_shapes_with_reference(base_model))
    return patched
