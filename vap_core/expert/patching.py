"""What the Wan and CogVideoX experts share: the VAP_EXPERT object, building an expert's ModelPatcher
from a state dict, the wrapper basics (active range, no deep copies) and attaching it to a base MODEL.

The expert lives in its own ModelPatcher (loaded, offloaded and partially loaded by ComfyUI's memory
manager) registered with ``set_additional_models``; the MoT forward is a ``DIFFUSION_MODEL`` wrapper that
continues the wrapper chain with its innermost call (the native ``_forward``) redirected to the MoT forward,
so every other ``DIFFUSION_MODEL`` wrapper runs whichever side of it it sits
(docs/HOST_INTEGRATION.md#composing-with-other-patches). Neither sits in ``model_options``, so later ``clone()``s share the expert weights (docs/HOST_INTEGRATION.md#why-clones-share-the-expert).
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch

import comfy.model_management
import comfy.model_patcher
import comfy.ops
import comfy.patcher_extension
import comfy.utils

from ..conds import REF_LATENT  # the entry whose shape the memory estimate counts (both variants)
from .context_windows import keep_reference_whole_in
from ..errors import VAPModelMismatch

WRAPPER_KEY = "vap_expert"


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


def build_expert(module_cls, arch: dict, sd: dict[str, torch.Tensor], variant: str, source: str = "") -> VAPExpert:
    """Instantiate ``module_cls(**arch)`` with ``comfy.ops`` layers and the file's tensors, in a ModelPatcher."""
    offload_device = comfy.model_management.unet_offload_device()
    with torch.device("meta"):
        module = module_cls(**arch, dtype=comfy.utils.weight_dtype(sd), operations=comfy.ops.manual_cast)
    patcher = comfy.model_patcher.CoreModelPatcher(module, load_device=comfy.model_management.get_torch_device(),
                                                   offload_device=offload_device)
    # assign=True keeps each tensor's own dtype (fp8 matrices next to bf16 norms) and the file's storage
    missing, unexpected = module.load_state_dict(sd, strict=False, assign=True)
    if missing or unexpected:
        raise VAPModelMismatch(
            f"the expert file does not match the {variant} VAP layout (missing {missing[:4]}, unexpected "
            f"{unexpected[:4]}). Convert the official checkpoint again with 'python -m vap_core.convert'.")
    module.to(offload_device)
    return VAPExpert(patcher, variant, list(arch["expert_blocks"]), source)


def schedule_fraction(transformer_options) -> float | None:
    """Where the current step sits in the sampling schedule (0 = first step, 1 = last), if known."""
    sigmas = transformer_options.get("sample_sigmas")
    current = transformer_options.get("sigmas")
    if sigmas is None or current is None or len(sigmas) < 2:
        return None
    index = int(torch.argmin((sigmas[:-1].float().cpu() - current.flatten()[0].float().cpu()).abs()))
    return index / max(1, len(sigmas) - 2)


class ExpertWrapper:
    """Base of the DIFFUSION_MODEL wrappers: the expert, its active range, a per-run cache slot.

    The wrapper is not terminal: it calls the rest of the chain (the wrappers added after it) with the chain's
    ``original`` (the native ``_forward``) replaced by ``self.forward``, which runs the MoT forward when the call
    carries a reference and the native ``_forward`` otherwise. Wrappers added before it wrap it as usual; wrappers
    added after it wrap the MoT forward. Subclasses define ``forward(original, model, *args, **kwargs)`` with the
    native forward's signature after the first two parameters."""

    def __init__(self, expert_patcher, start: float = 0.0, end: float = 1.0):
        self.expert_patcher = expert_patcher
        self.start, self.end = float(start), float(end)
        self.cache = {}
        # multi-GPU deep clones (MultiGPU CFG Split): each clone's diffusion model -> that clone's expert patcher
        self.clone_experts = weakref.WeakKeyDictionary()

    def expert_patcher_for(self, diffusion_model):
        """The expert that runs beside ``diffusion_model``: its device's deep clone, else the attached one."""
        return self.clone_experts.get(diffusion_model, self.expert_patcher)

    def __deepcopy__(self, memo):
        return self  # never duplicate the expert, whatever copies the options (docs/HOST_INTEGRATION.md#why-clones-share-the-expert)

    def active(self, transformer_options) -> bool:
        if self.start <= 0.0 and self.end >= 1.0:
            return True
        fraction = schedule_fraction(transformer_options or {})
        return fraction is None or self.start <= fraction <= self.end

    def clear(self):
        self.cache = {}

    def __call__(self, executor, *args, **kwargs):
        original, model = executor.original, executor.class_obj

        def innermost(*a, **k):
            return self.forward(original, model, *a, **k)
        chain = type(executor).new_class_executor(innermost, model, executor.wrappers, idx=executor.idx)
        return chain(*args, **kwargs)  # the next wrapper, or ``innermost`` when this one is the last

    def forward(self, original, model, *args, **kwargs):
        raise NotImplementedError


def _clear_after_sampling(wrapper: ExpertWrapper):
    def outer_sample(executor, *args, **kwargs):
        # core context windows must hand every window the whole reference (context_windows.py); registered per run,
        # so the context-window node may sit on either side of Apply VAP Expert
        keep_reference_whole_in(getattr(executor.class_obj, "model_options", None) or {})
        try:
            return executor(*args, **kwargs)
        finally:
            wrapper.clear()  # release what the wrapper cached for this sampling run
    return outer_sample


def _on_deepclone_multigpu(wrapper: ExpertWrapper):
    """ComfyUI's multi-GPU deep clone reloads the base and deep-clones its additional models (the expert too, from
    its ``cached_patcher_init``); the shared wrapper must then run each clone with that clone's expert."""
    def callback(original, clone):
        experts = clone.get_additional_models_with_key(WRAPPER_KEY)
        if experts:
            wrapper.clone_experts[clone.model.diffusion_model] = experts[0]
    return callback


MEMORY_PATCHES = ("memory_usage_factor_conds", "extra_conds_shapes")


def _count_reference_before_estimate(executor, model, *args, **kwargs):
    """PREPARE_SAMPLING wrapper: ComfyUI estimates the memory of a run before it loads the model, i.e. before the
    object patches that count the reference tokens are applied on a first load. Apply those two now, recording
    the originals where ``patch_model``/``unpatch_model`` keep them, so the first estimate counts the reference
    and unloading restores the base exactly."""
    for name in MEMORY_PATCHES:
        if name in model.object_patches and name not in model.object_patches_backup:
            model.object_patches_backup[name] = comfy.utils.set_attr(model.model, name, model.object_patches[name])
    return executor(model, *args, **kwargs)


def _extra_conds_shapes_with_reference(base_model):
    original = base_model.extra_conds_shapes

    def extra_conds_shapes(**kwargs):
        shapes = dict(original(**kwargs))
        ref = kwargs.get("model_conds", {}).get(REF_LATENT)
        if ref is not None:
            shapes[REF_LATENT] = list(ref.cond.shape)
        return shapes
    return extra_conds_shapes


def attach(model, expert: VAPExpert, wrapper: ExpertWrapper):
    """A clone of ``model`` with the expert loaded beside it and ``wrapper`` around its forward."""
    wrappers = comfy.patcher_extension.WrappersMP
    patched = model.clone()
    patched.set_additional_models(WRAPPER_KEY, [expert.patcher])
    for kind, hook in ((wrappers.DIFFUSION_MODEL, wrapper), (wrappers.OUTER_SAMPLE, _clear_after_sampling(wrapper)),
                       (wrappers.PREPARE_SAMPLING, _count_reference_before_estimate)):
        patched.remove_wrappers_with_key(kind, WRAPPER_KEY)
        patched.add_wrapper_with_key(kind, WRAPPER_KEY, hook)
    # the reference adds tokens in expert blocks: let ComfyUI's memory estimates count them
    base_model = model.model
    conds = tuple(base_model.memory_usage_factor_conds)
    patched.add_object_patch("memory_usage_factor_conds", conds + ((REF_LATENT,) if REF_LATENT not in conds else ()))
    patched.add_object_patch("extra_conds_shapes", _extra_conds_shapes_with_reference(base_model))
    patched.remove_callbacks_with_key(comfy.patcher_extension.CallbacksMP.ON_DEEPCLONE_MULTIGPU, WRAPPER_KEY)
    patched.add_callback_with_key(comfy.patcher_extension.CallbacksMP.ON_DEEPCLONE_MULTIGPU, WRAPPER_KEY,
                                  _on_deepclone_multigpu(wrapper))
    return patched
