"""Attach a Wan VAP expert to a ComfyUI Wan ``ModelPatcher`` without touching the base model.

The expert lives in its own ModelPatcher (loaded, offloaded and partially loaded by ComfyUI's
memory manager) registered with ``set_additional_models``; the MoT forward is a
``DIFFUSION_MODEL`` wrapper. Neither is stored in ``model_options``, so later ``clone()``s share
the expert weights instead of deep-copying them. Without reference conds the wrapper hands the
call straight to the base model: the output is bit-identical to the plain base.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

import torch

import comfy.model_management
import comfy.model_patcher
import comfy.ops
import comfy.patcher_extension
import comfy.utils

from . import wan_mot
from .checkpoint import WAN
from .errors import VAPModelMismatch
from .wan_expert import WanVAPExpert

WRAPPER_KEY = "vap_expert"
# Conditioning entries (under ``model_conds``) that carry the reference to the model.
REF_LATENT = "vap_ref_latent"          # [B, 36, F_ref, H, W]: clean ref latents + mask + ref image condition
REF_CONTEXT = "vap_ref_context"        # [B, 512, text_dim]: reference caption, T5 padded with zeros
REF_CLIP = "vap_ref_clip_fea"          # [B, 257, 1280]: CLIP-H penultimate states of the ref's first frame
REF_KEYS = (REF_LATENT, REF_CONTEXT, REF_CLIP)


@dataclass
class VAPExpert:
    """What the VAP_EXPERT socket carries."""
    patcher: comfy.model_patcher.ModelPatcher
    variant: str
    expert_blocks: list[int]
    source: str

    @property
    def module(self):
        return self.patcher.model


def build_wan_expert(sd: dict[str, torch.Tensor], metadata: dict[str, str], source: str = "") -> VAPExpert:
    config = json.loads(metadata.get("vap_config", "{}") or "{}")
    arch = WanVAPExpert.config_from_state_dict(sd, num_heads=config.get("num_attention_heads"))
    dtype = comfy.utils.weight_dtype(sd)
    load_device = comfy.model_management.get_torch_device()
    offload_device = comfy.model_management.unet_offload_device()
    with torch.device("meta"):
        module = WanVAPExpert(**arch, eps=config.get("eps", 1e-6), dtype=dtype, operations=comfy.ops.manual_cast)
    patcher = comfy.model_patcher.CoreModelPatcher(module, load_device=load_device, offload_device=offload_device)
    # assign=True keeps each tensor's own dtype (fp8 matrices next to bf16 norms) and the file's storage
    missing, unexpected = module.load_state_dict(sd, strict=False, assign=True)
    if missing or unexpected:
        raise VAPModelMismatch(
            f"the expert file does not match the Wan VAP layout (missing {missing[:4]}, unexpected {unexpected[:4]}). "
            "Convert the official checkpoint again with 'python -m vap_core.convert'.")
    module.to(offload_device)
    return VAPExpert(patcher, WAN, arch["expert_blocks"], source)


class WanVAPWrapper:
    """DIFFUSION_MODEL wrapper running the MoT forward when the conds carry a reference."""

    def __init__(self, expert_patcher):
        self.expert_patcher = expert_patcher

    def __call__(self, executor, x, timestep, context, clip_fea=None, time_dim_concat=None, transformer_options={}, **kwargs):
        ref_latent = kwargs.get(REF_LATENT)
        if ref_latent is None:
            return executor(x, timestep, context, clip_fea, time_dim_concat, transformer_options, **kwargs)
        if time_dim_concat is not None:
            raise VAPModelMismatch("VAP cannot be combined with Phantom-style time_dim_concat conditioning: remove that node.")
        wan = executor.class_obj
        expert = self.expert_patcher.model
        ref = wan_mot.reference_stream(wan, expert, ref_latent.to(x.dtype), kwargs[REF_CONTEXT].to(x.dtype),
                                       None if kwargs.get(REF_CLIP) is None else kwargs[REF_CLIP].to(x.dtype),
                                       x.dtype, transformer_options)
        return wan_mot.vap_forward(wan, expert, x, timestep, context, clip_fea, transformer_options, ref)


def apply_expert(model, expert: VAPExpert):
    """A clone of ``model`` (a Wan ModelPatcher) that runs VAP wherever the conds carry a reference."""
    if expert.variant != WAN:
        raise VAPModelMismatch(
            f"this is a {expert.variant} VAP expert but the apply node got a Wan model path; use the CogVideoX "
            "base with a CogVideoX expert, or the Wan expert (Video-As-Prompt-Wan2.1-14B) with Wan.")
    diffusion_model = model.model.diffusion_model
    expert.module.check_fits(diffusion_model)
    patched = model.clone()
    patched.set_additional_models(WRAPPER_KEY, [expert.patcher])
    patched.remove_wrappers_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, WRAPPER_KEY)
    patched.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, WRAPPER_KEY, WanVAPWrapper(expert.patcher))
    return patched
