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


def schedule_fraction(transformer_options) -> float | None:
    """Where the current step sits in the sampling schedule (0 = first step, 1 = last), if known."""
    sigmas = transformer_options.get("sample_sigmas")
    current = transformer_options.get("sigmas")
    if sigmas is None or current is None or len(sigmas) < 2:
        return None
    index = int(torch.argmin((sigmas[:-1].float().cpu() - current.flatten()[0].float().cpu()).abs()))
    return index / max(1, len(sigmas) - 2)


class WanVAPWrapper:
    """DIFFUSION_MODEL wrapper running the MoT forward when the conds carry a reference.

    The reference stream's step-independent work (patch embedding, RoPE table, the constant-timestep
    modulation, text and CLIP context) is computed once per sampling run and reused by every step:
    the cache key holds the conds' uuids (new for every run and every changed conditioning), shapes,
    dtype, device and the expert's patch state (a LoRA on the expert invalidates it)."""

    def __init__(self, expert_patcher, start: float = 0.0, end: float = 1.0):
        self.expert_patcher = expert_patcher
        self.start, self.end = float(start), float(end)
        self.cache = None

    def __deepcopy__(self, memo):
        return self  # never duplicate the expert, whatever copies the options (HOST_NOTES 2.2)

    def active(self, transformer_options) -> bool:
        if self.start <= 0.0 and self.end >= 1.0:
            return True
        fraction = schedule_fraction(transformer_options)
        return fraction is None or self.start <= fraction <= self.end

    def reference(self, wan, expert, x, transformer_options, kwargs):
        uuids = transformer_options.get("uuids")
        key = None
        if uuids:
            key = (tuple(uuids), tuple(kwargs[REF_LATENT].shape), tuple(kwargs[REF_CONTEXT].shape), x.dtype, x.device,
                   id(expert), self.expert_patcher.patches_uuid, repr(transformer_options.get("rope_options")))
            if self.cache is not None and self.cache[0] == key:
                return self.cache[1]
        clip = kwargs.get(REF_CLIP)
        ref = wan_mot.reference_stream(wan, expert, kwargs[REF_LATENT].to(x.dtype), kwargs[REF_CONTEXT].to(x.dtype),
                                       None if clip is None else clip.to(x.dtype), x.dtype, transformer_options)
        self.cache = None if key is None else (key, ref)
        return ref

    def clear(self):
        self.cache = None

    def __call__(self, executor, x, timestep, context, clip_fea=None, time_dim_concat=None, transformer_options={}, **kwargs):
        if kwargs.get(REF_LATENT) is None or not self.active(transformer_options):
            return executor(x, timestep, context, clip_fea, time_dim_concat, transformer_options, **kwargs)
        if time_dim_concat is not None:
            raise VAPModelMismatch("VAP cannot be combined with Phantom-style time_dim_concat conditioning: remove that node.")
        wan = executor.class_obj
        expert = self.expert_patcher.model
        ref = self.reference(wan, expert, x, transformer_options, kwargs)
        return wan_mot.vap_forward(wan, expert, x, timestep, context, clip_fea, transformer_options, ref)


def _clear_after_sampling(wrapper: WanVAPWrapper):
    def outer_sample(executor, *args, **kwargs):
        try:
            return executor(*args, **kwargs)
        finally:
            wrapper.clear()  # release the cached reference stream with the sampling run
    return outer_sample


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
    """A clone of ``model`` (a Wan ModelPatcher) that runs VAP wherever the conds carry a reference.

    ``start``/``end``: fraction of the sampling schedule in which the expert is active (outside it the
    model is the plain base; default: the whole schedule, as the official pipeline)."""
    if expert.variant != WAN:
        raise VAPModelMismatch(
            f"this is a {expert.variant} VAP expert but the apply node got a Wan model path; use the CogVideoX "
            "base with a CogVideoX expert, or the Wan expert (Video-As-Prompt-Wan2.1-14B) with Wan.")
    diffusion_model = model.model.diffusion_model
    expert.module.check_fits(diffusion_model)
    patched = model.clone()
    patched.set_additional_models(WRAPPER_KEY, [expert.patcher])
    patched.remove_wrappers_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, WRAPPER_KEY)
    wrapper = WanVAPWrapper(expert.patcher, start, end)
    patched.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, WRAPPER_KEY, wrapper)
    patched.remove_wrappers_with_key(comfy.patcher_extension.WrappersMP.OUTER_SAMPLE, WRAPPER_KEY)
    patched.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.OUTER_SAMPLE, WRAPPER_KEY, _clear_after_sampling(wrapper))
    # the reference doubles the tokens in expert blocks: let ComfyUI's memory estimates count them
    base_model = model.model
    conds = tuple(base_model.memory_usage_factor_conds)
    patched.add_object_patch("memory_usage_factor_conds", conds + ((REF_LATENT,) if REF_LATENT not in conds else ()))
    patched.add_object_patch("extra_conds_shapes", _extra_conds_shapes_with_reference(base_model))
    return patched
