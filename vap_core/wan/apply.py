"""Attach a Wan VAP expert to a ComfyUI Wan ``ModelPatcher`` without touching the base model.

How the expert is held and attached is shared with CogVideoX (``expert_patching``). Without reference
conds the wrapper hands the call straight to the base model: the output is bit-identical to the base.
"""
from __future__ import annotations

import json

import torch

from . import mot as wan_mot
from ..formats.checkpoint import WAN
from ..conds import REF_CLIP, REF_CONTEXT, REF_LATENT, WITHOUT_REFERENCE
from ..errors import VAPModelMismatch
from ..expert.patching import WRAPPER_KEY, ExpertWrapper, VAPExpert, attach, build_expert, schedule_fraction  # noqa: F401
from .expert import WanVAPExpert

# the conditioning entries that carry a Wan reference: clean ref latents + mask + ref image condition,
# the reference caption (T5 padded with zeros), CLIP-H states of the reference's first frame
REF_KEYS = (REF_LATENT, REF_CONTEXT, REF_CLIP)


def build_wan_expert(sd: dict[str, torch.Tensor], metadata: dict[str, str], source: str = "") -> VAPExpert:
    config = json.loads(metadata.get("vap_config", "{}") or "{}")
    arch = WanVAPExpert.config_from_state_dict(sd, num_heads=config.get("num_attention_heads"))
    return build_expert(WanVAPExpert, {**arch, "eps": config.get("eps", 1e-6)}, sd, WAN, source)


class WanVAPWrapper(ExpertWrapper):
    """DIFFUSION_MODEL wrapper running the MoT forward when the conds carry a reference.

    The reference stream's step-independent work (patch embedding, RoPE table, the constant-timestep
    modulation, text and CLIP context) is computed once per sampling run and reused by every step:
    the cache key holds the conds' uuids (new for every run and every changed conditioning), shapes,
    dtype, device and the expert's patch state (a LoRA on the expert invalidates it)."""

    CACHE_ENTRIES = 4

    # Eager even inside torch.compile (core TorchCompileModel): the cache is a Python dict keyed by the conds'
    # uuids, and TorchCompileModel drops the guards on everything reached through transformer_options (where this
    # wrapper sits), so a traced lookup would be baked into the graph and reused for another run's reference.
    @torch.compiler.disable
    def reference(self, wan, expert, x, transformer_options, kwargs):
        uuids = transformer_options.get("uuids")
        key = None
        if uuids:
            key = (tuple(uuids), tuple(kwargs[REF_LATENT].shape), tuple(kwargs[REF_CONTEXT].shape), x.dtype, x.device,
                   id(expert), self.expert_patcher_for(wan).patches_uuid, repr(transformer_options.get("rope_options")))
            if key in self.cache:
                return self.cache[key]
        clip = kwargs.get(REF_CLIP)
        latent = kwargs[REF_LATENT].to(x.dtype)
        ref = wan_mot.reference_stream(wan, expert, latent, kwargs[REF_CONTEXT].to(x.dtype),
                                       None if clip is None else clip.to(x.dtype), x.dtype, transformer_options,
                                       video=None if key is None else self.cached_video(key, latent))
        if key is not None:
            # one entry per cond batch: ComfyUI calls cond and uncond separately when memory is short
            if len(self.cache) >= self.CACHE_ENTRIES:
                self.cache.pop(next(iter(self.cache)))
            self.cache[key] = ref
        return ref

    def cached_video(self, key, latent):
        """The video part of a cached entry for the same reference video (cond and uncond called separately
        carry the same video with different captions): shared, not recomputed or stored twice."""
        latent = wan_mot.shared_rows(latent)
        for other, ref in self.cache.items():
            if other[1:2] + other[3:] == key[1:2] + key[3:] and ref["latent"].shape == latent.shape \
                    and torch.equal(ref["latent"], latent):
                return {k: ref[k] for k in ("latent", "tokens", "freqs", "e")}
        return None

    def forward(self, original, wan, x, timestep, context, clip_fea=None, time_dim_concat=None, transformer_options={},
                **kwargs):
        """The innermost call of the DIFFUSION_MODEL chain: the MoT forward when the conds carry a reference and
        the expert is active at this step, else the native ``original`` (the plain base)."""
        kwargs.pop(WITHOUT_REFERENCE, None)  # the reference guider's pass without the reference: the base as is
        if kwargs.get(REF_LATENT) is None or not self.active(transformer_options):
            return original(x, timestep, context, clip_fea, time_dim_concat, transformer_options, **kwargs)
        if time_dim_concat is not None:
            raise VAPModelMismatch("VAP cannot be combined with Phantom-style time_dim_concat conditioning: remove that node.")
        expert = self.expert_patcher_for(wan).model
        ref = self.reference(wan, expert, x, transformer_options, kwargs)
        return wan_mot.vap_forward(wan, expert, x, timestep, context, clip_fea, transformer_options, ref)


def apply_expert(model, expert: VAPExpert, start: float = 0.0, end: float = 1.0):
    """A clone of ``model`` (a Wan ModelPatcher) that runs VAP wherever the conds carry a reference.

    ``start``/``end``: fraction of the sampling schedule in which the expert is active (outside it the
    model is the plain base; default: the whole schedule, as the official pipeline)."""
    if expert.variant != WAN:
        raise VAPModelMismatch(
            f"this is a {expert.variant} VAP expert but the apply node got a Wan model path; use the CogVideoX "
            "base with a CogVideoX expert, or the Wan expert (Video-As-Prompt-Wan2.1-14B) with Wan.")
    expert.module.check_fits(model.model.diffusion_model)
    return attach(model, expert, WanVAPWrapper(expert.patcher, start, end))
