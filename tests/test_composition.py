"""VAP composes with core's model patches whichever side of *Apply VAP Expert* their node sits
(docs/HOST_INTEGRATION.md#composing-with-other-patches): EasyCache and LazyCache skip model calls, TorchCompileModel
compiles the MoT forward once, SkipLayerGuidanceDiT's block replacement reaches expert blocks, other DIFFUSION_MODEL
wrappers and attention overrides run, for Wan and CogVideoX, sampled in process through core's sampler."""
import pytest
import torch

import cog_fixtures
import wan_fixtures

WAN_CONFIG = {"num_layers": 3, "block_idx_with_mot_ref": [0, 2], "text_dim": 32, "ffn_dim": 64}
ORDERS = ["before", "after"]  # the core node's patch applied to the MODEL before / after VAPApplyExpert


@pytest.fixture(scope="module")
def wan(pack, tmp_path_factory):
    from vap_headless.demo.tiny_wan import official_wan_mot_state_dict
    tmp = tmp_path_factory.mktemp("wan_compose")
    sd, cfg = official_wan_mot_state_dict(WAN_CONFIG, seed=3)
    wan_fixtures.write_official_folder(str(tmp / "vap"), sd, cfg)
    base, expert, _ = wan_fixtures.convert_and_load(pack, str(tmp / "vap"), str(tmp))
    return Case(pack, "wan", base, expert, cfg)


@pytest.fixture(scope="module")
def cog(pack, tmp_path_factory):
    base, expert, cfg = cog_fixtures.tiny_case(pack, str(tmp_path_factory.mktemp("cog_compose")), seed=3)
    return Case(pack, "cog", base, expert, cfg)


class Case:
    """A tiny base + expert of one variant, its sampling inputs, and sampling through ``comfy.sample``."""

    def __init__(self, pack, variant, base, expert, config):
        self.pack, self.variant, self.base, self.expert, self.config = pack, variant, base, expert, config
        if variant == "wan":
            self.i = wan_fixtures.random_inputs(config, seed=4)
            self.mot = pack.vap_core.wan.mot
            self.wrapper_cls = pack.vap_core.wan.apply.WanVAPWrapper
            self.latent_channels = 16
        else:
            self.i = cog_fixtures.random_inputs(config, batch=1, seed=10)
            self.mot = pack.vap_core.cogvideox.mot
            self.wrapper_cls = pack.vap_core.cogvideox.apply.CogVAPWrapper
            self.latent_channels = 16
        self.expert_blocks = list(expert.expert_blocks)

    def apply(self, model):
        return self.pack.vap_core.expert.loading.apply_expert(model, self.expert)

    def compose(self, patch, order):
        """``patch`` (a core node's function on a MODEL) applied before or after Apply VAP Expert."""
        return self.apply(patch(self.base)) if order == "before" else patch(self.apply(self.base))

    def conds(self, with_ref=True):
        import comfy.clip_vision
        import comfy.conds
        i = self.i
        conds = self.pack.vap_core.conds

        def cond(text, ref_text):
            if self.variant == "wan":
                d = {"clip_vision_output": comfy.clip_vision.Output(), "concat_latent_image": i["x"][:, 20:],
                     "concat_mask": torch.zeros(1, 1, *i["x"].shape[2:])}
                d["clip_vision_output"].penultimate_hidden_states = i["clip"]
                refs = {conds.REF_CLIP: comfy.conds.CONDRegular(i["ref_clip"])}
            else:
                d = {"concat_latent_image": i["x"][:, 16:]}
                refs = {}
            if with_ref:
                d["model_conds"] = {conds.REF_LATENT: comfy.conds.CONDRegular(i["ref_latent"]),
                                    conds.REF_CONTEXT: comfy.conds.CONDRegular(ref_text), **refs}
            return [[text, d]]
        return (cond(i["context"], i["ref_context"]),
                cond(torch.zeros_like(i["context"]), torch.zeros_like(i["ref_context"])))

    def sample(self, model, steps=3, cfg=3.0, with_ref=True, denoise=1.0):
        import comfy.sample
        latent = torch.zeros(1, self.latent_channels, *self.i["x"].shape[2:])
        noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(0))
        positive, negative = self.conds(with_ref)
        return comfy.sample.sample(model, noise, steps, cfg, "euler", "simple", positive, negative, latent,
                                   denoise=denoise, seed=0)


def count_calls(monkeypatch, module, name):
    calls = []
    real = getattr(module, name)
    monkeypatch.setattr(module, name, lambda *a, **k: calls.append(a) or real(*a, **k))
    return calls


def node(cls, model, **inputs):
    return cls.execute(model, **inputs).result[0]


# ---- EasyCache / LazyCache ------------------------------------------------------------------------------

# Tiny random models change a lot from step to step, so a cache that skips steps moves their output more than it
# moves a real model's; the settings skip a few steps, and the bounds say how far that may move the result
CACHE_SETTINGS = {  # (variant, kind): (start_percent, reuse_threshold, bound on mean |cached - uncached| / mean |uncached|)
    ("wan", "EasyCache"): (0.0, 0.5, 0.05), ("wan", "LazyCache"): (0.0, 0.3, 0.05),
    ("cog", "EasyCache"): (0.6, 0.3, 0.15), ("cog", "LazyCache"): (0.6, 0.1, 0.15),
}
CACHE_STEPS = 12


@pytest.mark.parametrize("variant", ["wan", "cog"])
@pytest.mark.parametrize("kind", ["EasyCache", "LazyCache"])
def test_step_caches_engage_on_either_side(request, monkeypatch, variant, kind):
    case = request.getfixturevalue(variant)
    from comfy_extras import nodes_easycache
    cls = nodes_easycache.EasyCacheNode if kind == "EasyCache" else nodes_easycache.LazyCacheNode
    start, threshold, bound = CACHE_SETTINGS[variant, kind]

    def cache(model):
        return node(cls, model, reuse_threshold=threshold, start_percent=start, end_percent=1.0, verbose=False)

    calls = count_calls(monkeypatch, case.mot, "vap_forward")
    uncached = case.sample(case.apply(case.base), steps=CACHE_STEPS)
    assert len(calls) == CACHE_STEPS  # cond and uncond in one batched call per step
    base = case.sample(case.base, steps=CACHE_STEPS)

    # every MoT call under the cache gives what an uncached call with the same inputs gives: the pack's per-run
    # reference cache stays right across skipped steps
    seen = []
    real_forward = case.wrapper_cls.forward

    def recording(self, original, model, *args, **kwargs):
        out = real_forward(self, original, model, *args, **kwargs)
        seen.append((self, original, model, args, kwargs, out))
        return out
    monkeypatch.setattr(case.wrapper_cls, "forward", recording)

    results = {}
    for order in ORDERS:
        calls.clear()
        seen.clear()
        model = case.compose(cache, order)
        cached = case.sample(model, steps=CACHE_STEPS)
        assert 0 < len(calls) < CACHE_STEPS, f"{kind} {order} Apply VAP Expert skipped no step ({len(calls)} calls)"
        assert len(seen) == len(calls)
        assert (cached - uncached).abs().mean() < bound * uncached.abs().mean()
        assert not torch.allclose(cached, base, atol=1e-3)  # VAP still runs
        for wrapper, original, model_obj, args, kwargs, out in seen:
            options = dict(args[-1])
            options.pop("uuids")  # no uuids: nothing cached, the reference is computed afresh
            fresh = real_forward(wrapper.__class__(wrapper.expert_patcher), original, model_obj, *args[:-1], options,
                                 **kwargs)
            assert torch.allclose(out, fresh, atol=1e-5)
        results[order] = (len(calls), cached)
    # the same cache decisions and result whichever side of Apply VAP Expert the cache node sits
    assert results["before"][0] == results["after"][0]
    assert torch.equal(results["before"][1], results["after"][1])
