"""The speed-ups change nothing beyond float32 noise: cached reference work, batched CFG, and the
optional expert active range; ComfyUI's memory estimate counts the reference tokens."""
import pytest
import torch

from wan_fixtures import convert_and_load, random_inputs, ref_kwargs, write_official_folder

CONFIG = {"num_layers": 3, "block_idx_with_mot_ref": [0, 2], "text_dim": 32, "ffn_dim": 64}


@pytest.fixture
def tiny(pack, tmp_path):
    from vap_headless.demo.tiny_wan import official_wan_mot_state_dict
    sd, cfg = official_wan_mot_state_dict(CONFIG, seed=11)
    write_official_folder(str(tmp_path / "vap"), sd, cfg)
    base, expert, _ = convert_and_load(pack, str(tmp_path / "vap"), str(tmp_path))
    return base, expert, cfg


def _call(patched, i, options, batch=slice(None)):
    options = {"wrappers": patched.wrappers, **options}
    kwargs = {k: v[batch] for k, v in i["ref"].items()}
    with torch.no_grad():
        return patched.model.diffusion_model(i["x"][batch], i["t"][batch], i["context"][batch],
                                             clip_fea=i["clip"][batch], transformer_options=options, **kwargs)


def _inputs(pack, cfg, batch=2):
    i = random_inputs(cfg, seed=12, batch=batch)
    i["ref"] = ref_kwargs(pack, i["ref_latent"], i["ref_context"], i["ref_clip"])
    return i


def test_cached_reference_equals_uncached(pack, tiny, monkeypatch):
    base, expert, cfg = tiny
    patched = pack.vap_core.expert.loading.apply_expert(base, expert)
    i = _inputs(pack, cfg)
    calls = []
    real = pack.vap_core.wan.mot.reference_stream
    monkeypatch.setattr(pack.vap_core.wan.mot, "reference_stream", lambda *a, **k: calls.append(1) or real(*a, **k))
    uncached = _call(patched, i, {})  # no cond uuids: nothing is cached
    sampling = {"uuids": ["cond-uuid", "uncond-uuid"]}
    first = _call(patched, i, dict(sampling))
    i["t"] = torch.full_like(i["t"], 300.0)  # the next step
    second = _call(patched, i, dict(sampling))
    assert len(calls) == 2  # the uncached call and the first step; the second step reused the cache
    assert torch.equal(first, uncached)
    i_fresh = _inputs(pack, cfg)
    i_fresh["t"] = i["t"]
    assert torch.allclose(second, _call(patched, i_fresh, {}), atol=1e-6)
    # a new sampling run (new cond uuids) recomputes
    _call(patched, i, {"uuids": ["other", "uuids"]})
    assert len(calls) == 4
    # cond and uncond as separate calls (ComfyUI does that when memory is short): one entry each, no thrashing
    calls.clear()
    for _ in range(3):
        _call(patched, i, {"uuids": ["cond-uuid"]}, slice(0, 1))
        _call(patched, i, {"uuids": ["uncond-uuid"]}, slice(1, 2))
    assert len(calls) == 2


def test_cache_invalidated_by_expert_patches(pack, tiny):
    base, expert, cfg = tiny
    patched = pack.vap_core.expert.loading.apply_expert(base, expert)
    i = _inputs(pack, cfg)
    opts = {"uuids": ["a", "b"]}
    before = _call(patched, i, dict(opts))
    expert.patcher.patches_uuid = "changed"  # what add_patches does when a LoRA lands on the expert
    wrapper = patched.get_wrappers("diffusion_model", pack.vap_core.wan.apply.WRAPPER_KEY)[0]
    old_keys = set(wrapper.cache)
    _call(patched, i, dict(opts))
    assert len(set(wrapper.cache) - old_keys) == 1
    assert torch.equal(before, _call(patched, i, {}))


def test_batched_cfg_equals_separate_calls(pack, tiny):
    base, expert, cfg = tiny
    patched = pack.vap_core.expert.loading.apply_expert(base, expert)
    i = _inputs(pack, cfg, batch=2)
    both = _call(patched, i, {})
    cond, uncond = _call(patched, i, {}, slice(0, 1)), _call(patched, i, {}, slice(1, 2))
    assert torch.allclose(both, torch.cat([cond, uncond]), atol=1e-5)


def test_active_range_runs_plain_base_outside(pack, tiny):
    base, expert, cfg = tiny
    full = pack.vap_core.expert.loading.apply_expert(base, expert)
    late = pack.vap_core.expert.loading.apply_expert(base, expert, start=0.5, end=1.0)
    i = _inputs(pack, cfg)
    sigmas = torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0])
    early_step = {"sample_sigmas": sigmas, "sigmas": sigmas[0:1]}
    late_step = {"sample_sigmas": sigmas, "sigmas": sigmas[3:4]}
    plain = _call(base, {**i, "ref": {}}, {})
    assert torch.equal(_call(late, i, early_step), plain)
    assert torch.equal(_call(late, i, late_step), _call(full, i, late_step))
    assert not torch.allclose(_call(full, i, early_step), plain, atol=1e-3)


def test_memory_estimate_counts_reference(pack, tiny):
    import comfy.conds
    base, expert, cfg = tiny
    patched = pack.vap_core.expert.loading.apply_expert(base, expert)
    wa = pack.vap_core.wan.apply
    ref = torch.zeros(1, 36, 13, 60, 104)
    cond = {"model_conds": {wa.REF_LATENT: comfy.conds.CONDRegular(ref)}}
    shape = [2, 16, 13, 60, 104]
    plain = base.model.memory_required(shape, cond_shapes={})
    patched.patch_model()
    try:
        shapes = patched.model.extra_conds_shapes(**cond)
        assert shapes[wa.REF_LATENT] == list(ref.shape)
        with_ref = patched.model.memory_required(shape, cond_shapes={k: [v] for k, v in shapes.items()})
    finally:
        patched.unpatch_model()
    assert with_ref > plain * 1.4
    assert base.model.extra_conds_shapes(**cond) == {}  # the base model is left as it was


def test_unread_reference_work_is_skipped(pack, tiny):
    """The last expert block's reference queries, output projection, cross-attention and FFN are never computed
    (nothing reads them); its keys/values are (the target attends to them), as every other expert block's."""
    base, expert, cfg = tiny
    patched = pack.vap_core.expert.loading.apply_expert(base, expert)
    first, last = (expert.module.block(i) for i in (CONFIG["block_idx_with_mot_ref"][0], CONFIG["block_idx_with_mot_ref"][-1]))
    calls = {}
    hooks = [m.register_forward_hook(lambda mod, a, o, name=name: calls.__setitem__(name, calls.get(name, 0) + 1))
             for name, m in (("first.k", first.self_attn.k), ("last.q", last.self_attn.q), ("last.k", last.self_attn.k),
                             ("last.o", last.self_attn.o), ("last.ffn", last.ffn), ("last.cross", last.cross_attn))]
    try:
        i = _inputs(pack, cfg)
        for _ in range(3):  # three steps of one sampling run
            _call(patched, i, {"uuids": ["c", "u"]})
    finally:
        for h in hooks:
            h.remove()
    # cond and uncond differ here (target and reference rows): the self-attention walks them row by row, one
    # reference k projection per row and step (a cache of the first block's keys would make it 0)
    assert calls.get("first.k") == 3 * 2
    assert calls.get("last.k") == 3 * 2
    assert not any(calls.get(n) for n in ("last.q", "last.o", "last.ffn", "last.cross"))


def test_reference_shared_by_cond_and_uncond_is_embedded_once(pack, tiny):
    base, expert, cfg = tiny
    patched = pack.vap_core.expert.loading.apply_expert(base, expert)
    i = _inputs(pack, cfg, batch=2)
    wa = pack.vap_core.wan.apply
    for key in (wa.REF_LATENT, wa.REF_CLIP):  # the official pipeline: only the texts differ between the passes
        i["ref"][key] = i["ref"][key][:1].expand_as(i["ref"][key]).clone()
    both = _call(patched, i, {"uuids": ["c", "u"]})
    wrapper = patched.get_wrappers("diffusion_model", wa.WRAPPER_KEY)[0]
    assert next(iter(wrapper.cache.values()))["tokens"].shape[0] == 1
    cond, uncond = _call(patched, i, {}, slice(0, 1)), _call(patched, i, {}, slice(1, 2))
    assert torch.allclose(both, torch.cat([cond, uncond]), atol=1e-5)


def test_cond_and_uncond_called_separately_share_the_reference_video_work(pack, tiny, monkeypatch):
    """ComfyUI's low-memory mode calls cond and uncond one by one: the second call reuses the first's reference
    video part (tokens, RoPE, modulation) instead of computing and holding it twice; same output."""
    base, expert, cfg = tiny
    patched = pack.vap_core.expert.loading.apply_expert(base, expert)
    wa, mot = pack.vap_core.wan.apply, pack.vap_core.wan.mot
    i = _inputs(pack, cfg, batch=2)
    for key in (wa.REF_LATENT, wa.REF_CLIP):
        i["ref"][key] = i["ref"][key][:1].expand_as(i["ref"][key]).clone()
    calls = []
    real = mot.reference_video
    monkeypatch.setattr(mot, "reference_video", lambda *a, **k: calls.append(1) or real(*a, **k))
    cond = _call(patched, i, {"uuids": ["c"]}, slice(0, 1))
    uncond = _call(patched, i, {"uuids": ["u"]}, slice(1, 2))
    assert len(calls) == 1
    wrapper = patched.get_wrappers("diffusion_model", wa.WRAPPER_KEY)[0]
    entries = list(wrapper.cache.values())
    assert len(entries) == 2 and entries[0]["tokens"] is entries[1]["tokens"]
    assert entries[0]["context"] is not entries[1]["context"]  # the captions differ
    torch.testing.assert_close(torch.cat([cond, uncond]), _call(patched, i, {}), rtol=0, atol=1e-5)
    # another reference video is not mistaken for the cached one
    calls.clear()
    i["ref"][wa.REF_LATENT] = i["ref"][wa.REF_LATENT] + 1
    _call(patched, i, {"uuids": ["c2"]}, slice(0, 1))
    assert len(calls) == 1


def _cfg_pair(pack, cfg):
    """A batched CFG call as ComfyUI's sampler makes it: the same noisy latent, timestep, image and reference
    video in both rows; only the texts (target and reference captions) differ."""
    i = _inputs(pack, cfg, batch=2)
    wa = pack.vap_core.wan.apply
    for key in ("x", "clip"):
        i[key] = i[key][:1].expand_as(i[key]).clone()
    for key in (wa.REF_LATENT, wa.REF_CLIP):
        i["ref"][key] = i["ref"][key][:1].expand_as(i["ref"][key]).clone()
    return i


def _batches_seen(module, run):
    seen = []
    hook = module.register_forward_hook(lambda mod, args, out: seen.append(args[0].shape[0]))
    try:
        result = run()
    finally:
        hook.remove()
    return seen, result


def test_batched_cfg_shares_the_first_self_attention_and_equals_separate_calls(pack, tiny):
    """Rows that only differ by their texts share the first expert block's joint self-attention (computed once,
    at batch 1); later expert blocks walk the rows one by one (batch-1 key/value buffers). The result equals
    cond and uncond called separately, and the plain batch-2 path of an attn1_patch-carrying call."""
    base, expert, cfg = tiny
    patched = pack.vap_core.expert.loading.apply_expert(base, expert)
    i = _cfg_pair(pack, cfg)
    first, second = CONFIG["block_idx_with_mot_ref"]
    wan = patched.model.diffusion_model
    q_first, both = _batches_seen(wan.blocks[first].self_attn.q, lambda: _call(patched, i, {"uuids": ["c", "u"]}))
    q_second, _ = _batches_seen(wan.blocks[second].self_attn.q, lambda: _call(patched, i, {"uuids": ["c", "u"]}))
    assert q_first == [1]          # once for both rows
    assert q_second == [1, 1]      # row by row
    cond, uncond = _call(patched, i, {}, slice(0, 1)), _call(patched, i, {}, slice(1, 2))
    torch.testing.assert_close(both, torch.cat([cond, uncond]), rtol=0, atol=1e-5)
    assert not torch.allclose(cond, uncond, atol=1e-3)  # the texts do act: the rows are not trivially equal
    # an attn1_patch may read the whole batch: then the rows go together, same result
    seen = []
    q_all, patched_out = _batches_seen(wan.blocks[first].self_attn.q, lambda: _call(
        patched, i, {"patches": {"attn1_patch": [lambda a: seen.append(a["x"].shape[0]) or a["x"]]}}))
    assert q_all == [2] and seen[0] == 2
    torch.testing.assert_close(patched_out, both, rtol=0, atol=1e-5)
