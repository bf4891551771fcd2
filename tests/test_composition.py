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

    def sample(self, model, steps=3, cfg=3.0, with_ref=True, denoise=1.0, callback=None):
        import comfy.sample
        latent = torch.zeros(1, self.latent_channels, *self.i["x"].shape[2:])
        noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(0))
        positive, negative = self.conds(with_ref)
        return comfy.sample.sample(model, noise, steps, cfg, "euler", "simple", positive, negative, latent,
                                   denoise=denoise, seed=0, callback=callback)


    def call(self, model, callback=None, **options):
        """One direct diffusion-model call with ``model``'s wrappers (as the sampler makes it) and ``options``."""
        i = self.i
        options = {"wrappers": model.wrappers, **options}
        if callback is not None:
            options["vap_block_callback"] = callback
        with torch.no_grad():
            if self.variant == "wan":
                ref = wan_fixtures.ref_kwargs(self.pack, i["ref_latent"], i["ref_context"], i["ref_clip"])
                return model.model.diffusion_model(i["x"], i["t"], i["context"], clip_fea=i["clip"],
                                                   transformer_options=options, **ref)
            ref = cog_fixtures.ref_kwargs(self.pack, i["ref_latent"], i["ref_context"])
            return model.model.diffusion_model(i["x"], i["t"], i["context"], transformer_options=options, **ref)


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


# ---- SkipLayerGuidanceDiT and "dit" block replacements --------------------------------------------------

@pytest.mark.parametrize("variant", ["wan", "cog"])
def test_skip_layer_guidance_reaches_expert_blocks_on_either_side(request, variant):
    case = request.getfixturevalue(variant)
    from comfy_extras.nodes_slg import SkipLayerGuidanceDiT
    layer = str(case.expert_blocks[0])

    def slg(model):
        return node(SkipLayerGuidanceDiT, model, scale=3.0, start_percent=0.0, end_percent=1.0, double_layers=layer,
                    single_layers="", rescaling_scale=0.0)

    vap = case.sample(case.apply(case.base))
    base_slg = case.sample(slg(case.base))
    outs = {order: case.sample(case.compose(slg, order)) for order in ORDERS}
    assert torch.equal(outs["before"], outs["after"])
    assert not torch.allclose(outs["before"], vap, atol=1e-3)  # the skipped expert block changed the guidance
    assert not torch.allclose(outs["before"], base_slg, atol=1e-3)  # VAP still runs


@pytest.mark.parametrize("variant", ["wan", "cog"])
def test_block_replacement_of_an_expert_block(request, variant):
    """A "dit" double_block replacement of an expert block gets the target stream; its original_block is the
    joint (MoT) block; a replacement that does not call it (SkipLayerGuidance's skip) skips both streams."""
    case = request.getfixturevalue(variant)
    import comfy.model_patcher
    model = case.apply(case.base)
    k = case.expert_blocks[-1]
    assert k > 0

    def with_replacement(fn):
        options = comfy.model_patcher.set_model_options_patch_replace({"transformer_options": {}}, fn, "dit", "double_block", k)
        return options["transformer_options"]

    def run(fn=None):
        blocks = {}
        options = with_replacement(fn) if fn is not None else {}
        out = case.call(model, callback=lambda i, x, r, *text: blocks.setdefault(i, (x.clone(), r.clone())), **options)
        return out, blocks

    plain, plain_blocks = run()
    through, _ = run(lambda args, extra: extra["original_block"](args))
    assert torch.equal(through, plain)  # original_block is the whole joint block, reference stream included

    seen = {}

    def skip(args, extra):
        seen["img"] = args["img"].clone()
        return args
    skipped, blocks = run(skip)
    assert not torch.allclose(skipped, plain, atol=1e-4)
    assert torch.equal(blocks[k][0], seen["img"])  # target stream left as it came in
    assert torch.equal(blocks[k][1], blocks[k - 1][1])  # reference stream left as well
    assert torch.equal(blocks[k - 1][0], plain_blocks[k - 1][0])  # the blocks before ran as usual

    def double_target(args, extra):
        out = extra["original_block"](args)
        return {**out, "img": out["img"] * 2}
    doubled, blocks = run(double_target)
    assert torch.allclose(blocks[k][0], 2 * plain_blocks[k][0])
    assert torch.equal(blocks[k][1], plain_blocks[k][1])


# ---- attention overrides and other DIFFUSION_MODEL wrappers ---------------------------------------------

@pytest.mark.parametrize("variant", ["wan", "cog"])
def test_attention_override_runs_in_expert_blocks(request, variant):
    case = request.getfixturevalue(variant)
    model = case.apply(case.base)
    plain = case.call(model)
    seen = []

    def override(func, q, k, v, *args, transformer_options=None, **kwargs):
        seen.append((transformer_options["block_index"], k.shape[-2] if kwargs.get("skip_reshape") else k.shape[1]))
        return func(q, k, v, *args, transformer_options=transformer_options, **kwargs)
    assert torch.equal(case.call(model, optimized_attention_override=override), plain)
    f, h, w = case.i["x"].shape[2:]
    target_len = f * (h // 2) * (w // 2) + (case.i["context"].shape[1] if variant == "cog" else 0)
    joint = {i for i, n in seen if n == 2 * target_len}  # one reference as long as the target
    assert joint == set(case.expert_blocks)  # the joint target+reference attention went through the override

    def zero_in_expert_blocks(func, q, k, v, *args, transformer_options=None, **kwargs):
        out = func(q, k, v, *args, transformer_options=transformer_options, **kwargs)
        return out * 0 if transformer_options["block_index"] in case.expert_blocks else out
    assert not torch.allclose(case.call(model, optimized_attention_override=zero_in_expert_blocks), plain, atol=1e-4)


@pytest.mark.parametrize("variant", ["wan", "cog"])
@pytest.mark.parametrize("order", ORDERS)
def test_other_diffusion_model_wrappers_run_on_either_side(request, variant, order):
    """A wrapper inside Apply VAP Expert (added after it) sees the call and its changes reach the MoT forward; one
    outside (added before it) wraps the MoT forward's result."""
    case = request.getfixturevalue(variant)
    import comfy.patcher_extension
    seen = []

    def wrapper(executor, x, *args, **kwargs):
        seen.append(case.pack.vap_core.conds.REF_LATENT in kwargs)
        return executor(x * 0.5, *args, **kwargs)

    def add(model):
        model = model.clone()
        model.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, "test_halve_input", wrapper)
        return model

    vap = case.apply(case.base)
    out = case.call(case.compose(add, order))
    assert seen == [True]
    i = case.i
    halved = dict(i, x=i["x"] * 0.5)
    case.i = halved
    try:
        want = case.call(vap)
    finally:
        case.i = i
    assert torch.equal(out, want)
    assert not torch.allclose(out, case.call(case.base), atol=1e-3)  # VAP still runs


def test_wan_attention_patches_and_block_patches_run_in_expert_blocks(wan, monkeypatch):
    """Wan's ``patches["attn1_patch"]``/``["attn2_patch"]`` run on the target stream of expert blocks as in plain
    blocks; ``patches["double_block"]`` runs after each block where the host's WanModel runs it (newer ComfyUI)."""
    model = wan.apply(wan.base)
    plain = wan.call(model)
    seen = []

    def attn1(args):
        seen.append(("attn1", args["transformer_options"]["block_index"], args["q"].shape, args["k"].shape))
        return args["x"]

    def attn2(args):
        seen.append(("attn2", args["transformer_options"]["block_index"]))
        return args["x"]

    def block_patch(args):
        seen.append(("block", args["block_index"]))
        return {"img": args["img"]}
    patches = {"attn1_patch": [attn1], "attn2_patch": [attn2], "double_block": [block_patch]}
    assert torch.equal(wan.call(model, patches=patches), plain)
    blocks = range(WAN_CONFIG["num_layers"])
    assert [b for kind, b, *_ in seen if kind == "attn1"] == list(blocks)
    assert len({(q, k) for kind, _, q, k in [s for s in seen if s[0] == "attn1"]}) == 1  # same layout everywhere
    assert [s[1] for s in seen if s[0] == "attn2"] == list(blocks)
    host_runs = wan.mot.HOST_RUNS_BLOCK_PATCHES
    assert [s[1] for s in seen if s[0] == "block"] == (list(blocks) if host_runs else [])
    seen.clear()
    monkeypatch.setattr(wan.mot, "HOST_RUNS_BLOCK_PATCHES", True)  # as ComfyUI 0.38's WanModel.forward_orig
    assert torch.equal(wan.call(model, patches=patches), plain)
    assert [s[1] for s in seen if s[0] == "block"] == list(blocks)


# ---- TorchCompileModel ----------------------------------------------------------------------------------

@pytest.mark.parametrize("variant", ["wan", "cog"])
def test_torch_compile_on_either_side(request, variant):
    """Core TorchCompileModel (CPU inductor) compiles the MoT forward: the compiled model gives the eager output
    within float32 noise, compiles during the first step only, and the other order reuses those graphs."""
    case = request.getfixturevalue(variant)
    import torch._dynamo
    from torch._dynamo.utils import counters
    from comfy_extras.nodes_torch_compile import TorchCompileModel

    vap = case.sample(case.apply(case.base))
    base = case.sample(case.base)
    torch._dynamo.reset()
    counters.clear()

    def graphs():
        return counters["stats"]["unique_graphs"]
    for order in ORDERS:
        per_step = []
        compiled = case.compose(lambda m: node(TorchCompileModel, m, backend="inductor"), order)
        out = case.sample(compiled, callback=lambda step, *a: per_step.append(graphs()))
        assert per_step[0] > 0  # compiled
        assert per_step[-1] == per_step[0], f"recompiled after the first step ({order}): {per_step}"
        scale = vap.abs().max()
        assert torch.allclose(out, vap, atol=1e-4 * scale, rtol=0), (out - vap).abs().max()
        assert not torch.allclose(out, base, atol=1e-3)  # VAP still runs
        if order == "after":
            assert per_step[0] == first_graphs  # the same graphs serve the other order: no recompile
        first_graphs = per_step[-1]
    assert counters["stats"]["unique_graphs"] == first_graphs
