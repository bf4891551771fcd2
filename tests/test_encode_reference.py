"""VAP Encode Reference + Conditioning from Reference against the real host: the new pair gives the deprecated
one-node conditioning's output bit for bit (Wan with and without a shorter reference, CogVideoX with 1 to 3
references, posterior sample and mode), takes size and length from the reference, does no reference VAE encode
itself, and refuses wrong inputs with the fix. The cache property in a real server is in
tests/test_server_e2e_encode_reference.py."""
import pytest
import torch

W, H, LENGTH = 32, 16, 5          # latent [F=2, h=2, w=4]


def _frames(seed, n=LENGTH, h=H, w=W):
    return torch.rand(n, h, w, 3, generator=torch.Generator().manual_seed(seed))


def _states(seed, tokens, dim):
    return torch.randn(1, tokens, dim, generator=torch.Generator().manual_seed(seed))


def _text(seed, tokens, dim):
    return [[_states(seed, tokens, dim), {"pooled_output": None}]]


def _clip(seed, n=1):
    import comfy.clip_vision
    g = torch.Generator().manual_seed(seed)
    out = comfy.clip_vision.Output()
    out["penultimate_hidden_states"] = torch.randn(n, 257, 1280, generator=g)
    out["last_hidden_state"] = torch.randn(n, 257, 1280, generator=g)
    out["image_embeds"] = torch.randn(n, 1024, generator=g)
    return out


def _same(a, b, where="") -> None:
    """a and b hold the same values bit for bit: tensors, conds (comfy.conds), dicts, lists, plain values."""
    import comfy.conds
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a, b), f"{where}: max diff {(a.float() - b.float()).abs().max()}"
    elif isinstance(a, comfy.conds.CONDRegular) or isinstance(a, comfy.conds.CONDConstant):
        assert type(a) is type(b), where
        _same(a.cond, b.cond, where + ".cond")
    elif isinstance(a, dict):
        assert set(a) == set(b), f"{where}: {set(a) ^ set(b)}"
        for k in a:
            _same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _same(x, y, f"{where}[{i}]")
    else:
        assert a is b or a == b, f"{where}: {a!r} != {b!r}"


class _CountingVAE:
    """A real VAE whose encode entry points count their calls (the same object, so nodes take it as the VAE)."""

    def __init__(self, vae):
        self.vae, self.calls = vae, 0

    def __enter__(self):
        cls = type(self.vae)
        self._encode = cls.encode
        counter = self

        def encode(vae, *args, **kwargs):
            counter.calls += 1
            return counter._encode(vae, *args, **kwargs)
        cls.encode = encode
        return self

    def __exit__(self, *exc):
        type(self.vae).encode = self._encode


# ----------------------------------------------------------------------------------------------- Wan

WAN_DIM = 32


@pytest.fixture(scope="module")
def wan_vae(pack):
    import comfy.sd
    from vap_headless.demo.tiny_vae import make_tiny_wan_vae_state_dict
    return comfy.sd.VAE(sd=make_tiny_wan_vae_state_dict(dim=8, seed=0))


@pytest.fixture(scope="module")
def wan_inputs(pack):
    return {"positive": _text(1, 512, WAN_DIM), "negative": _text(2, 512, WAN_DIM),
            "ref_positive": _text(3, 512, WAN_DIM), "start_image": _frames(4, n=1),
            "clip_vision_start_image": _clip(6)}


def _wan_old(pack, vae, inputs, frames, clip_ref, length, ref_negative=None):
    return pack.nodes.wan_conditioning.VAPWanConditioning.execute(
        **inputs, vae=vae, width=W, height=H, length=length, batch_size=2, reference_frames=frames,
        clip_vision_reference=clip_ref, ref_negative=ref_negative).args


def _wan_new(pack, vae, inputs, frames, clip_ref, extra_frames=0, ref_negative=None):
    reference = pack.nodes.reference_encode_nodes.VAPWanEncodeReference.execute(vae, frames, clip_ref).args[0]
    return pack.nodes.wan_reference_conditioning.VAPWanConditioningFromReference.execute(
        **inputs, vae=vae, reference=reference, extra_frames=extra_frames, batch_size=2,
        ref_negative=ref_negative).args


@pytest.mark.parametrize("ref_frames, extra_frames, ref_negative", [(LENGTH, 0, False), (LENGTH, 0, True),
                                                                    (LENGTH, 4, False)])
def test_wan_pair_equals_the_one_node_conditioning(pack, wan_vae, wan_inputs, ref_frames, extra_frames,
                                                   ref_negative):
    """Encode Reference + Conditioning from Reference == VAP Wan Conditioning, bit for bit, with a reference as long
    as the video and one shorter (extra_frames: a video of 9 frames, the reference's 5 + 4)."""
    frames, clip_ref = _frames(5, n=ref_frames), _clip(7, n=ref_frames)
    neg = _text(8, 512, WAN_DIM) if ref_negative else None
    old = _wan_old(pack, wan_vae, wan_inputs, frames, clip_ref, ref_frames + extra_frames, neg)
    new = _wan_new(pack, wan_vae, wan_inputs, frames, clip_ref, extra_frames, neg)
    _same(list(old), list(new), "wan")
    assert old[2]["samples"].shape == (2, 16, (ref_frames + extra_frames - 1) // 4 + 1, H // 8, W // 8)
    assert pack.vap_core.conds.REF_LATENT in new[0][0][1]["model_conds"]


def test_wan_start_image_is_stretched_like_core_image_scale(pack, wan_vae, wan_inputs):
    """A start image of another size: the new node stretches it to the reference's size with Lanczos, as the
    shipped one-node graphs did with core 'Upscale Image' (lanczos, crop disabled) in front of the old node."""
    import nodes as core_nodes
    image = _frames(9, n=1, h=24, w=40)
    scaled = core_nodes.ImageScale().upscale(image, "lanczos", W, H, "disabled")[0]
    frames, clip_ref = _frames(5), _clip(7, n=LENGTH)
    old = _wan_old(pack, wan_vae, {**wan_inputs, "start_image": scaled}, frames, clip_ref, LENGTH)
    new = _wan_new(pack, wan_vae, {**wan_inputs, "start_image": image}, frames, clip_ref)
    _same(list(old), list(new), "wan")


def test_wan_conditioning_from_reference_encodes_only_the_target(pack, wan_vae, wan_inputs):
    """The reference's two VAE encodes (clip, first-frame condition) happen in the encode node; the conditioning
    node encodes the start image once (core WanImageToVideo), whatever the prompts."""
    frames, clip_ref = _frames(5), _clip(7, n=LENGTH)
    with _CountingVAE(wan_vae) as counter:
        reference = pack.nodes.reference_encode_nodes.VAPWanEncodeReference.execute(wan_vae, frames, clip_ref).args[0]
        assert counter.calls == 2
        for seed in (20, 21):
            pack.nodes.wan_reference_conditioning.VAPWanConditioningFromReference.execute(
                **{**wan_inputs, "positive": _text(seed, 512, WAN_DIM)}, vae=wan_vae, reference=reference)
        assert counter.calls == 4
    assert (reference.frames, reference.width, reference.height) == (LENGTH, W, H)
    assert reference.latent.shape == (1, 36, 2, H // 8, W // 8) and reference.clip.shape == (1, 257, 1280)


@pytest.mark.parametrize("frames, words", [
    (_frames(5, n=6), ["6 frames", "4k+1", "num_frames = 5", "Load VAP Reference Video"]),
    (_frames(5, w=40), ["40x16", "multiples of 16", "32x16", "Load VAP Reference Video"]),
    (torch.rand(LENGTH, H, W), ["IMAGE batch"]),
])
def test_wan_encode_errors_name_the_fix(pack, wan_vae, frames, words):
    with pytest.raises(pack.vap_core.errors.VAPInputError) as err:
        pack.nodes.reference_encode_nodes.VAPWanEncodeReference.execute(wan_vae, frames, _clip(7))
    for word in words:
        assert word in str(err.value)


def test_wan_conditioning_errors_name_the_fix(pack, wan_vae, wan_inputs):
    cond = pack.nodes.wan_reference_conditioning.VAPWanConditioningFromReference
    errors = pack.vap_core.errors.VAPInputError
    with pytest.raises(errors, match="clip_vision_reference"):
        pack.nodes.reference_encode_nodes.VAPWanEncodeReference.execute(wan_vae, _frames(5), None)
    reference = pack.nodes.reference_encode_nodes.VAPWanEncodeReference.execute(wan_vae, _frames(5), _clip(7)).args[0]
    with pytest.raises(errors, match="multiple of 4.*use 4 or 8"):
        cond.execute(**wan_inputs, vae=wan_vae, reference=reference, extra_frames=6)
    with pytest.raises(errors, match="VAP Wan Encode Reference"):
        cond.execute(**wan_inputs, vae=wan_vae, reference=None)
    positive, _, _ = cond.execute(**wan_inputs, vae=wan_vae, reference=reference).args
    with pytest.raises(errors, match="exactly one reference"):
        cond.execute(**{**wan_inputs, "positive": positive}, vae=wan_vae, reference=reference)


# ----------------------------------------------------------------------------------------- CogVideoX

COG_DIM = 24


@pytest.fixture(scope="module")
def cog_vae(pack):
    import comfy.sd
    from vap_headless.demo.tiny_vae import make_tiny_cog_vae_state_dict
    return comfy.sd.VAE(sd=make_tiny_cog_vae_state_dict(seed=0))


@pytest.fixture(scope="module")
def cog_inputs(pack):
    return {"positive": _text(1, 226, COG_DIM), "negative": _text(2, 226, COG_DIM),
            "ref_positive": _text(3, 226, COG_DIM), "start_image": _frames(4, n=1, h=24, w=40)}


def _cog_refs(n):
    return [(_frames(10 + i), _text(30 + i, 226, COG_DIM)) for i in range(n)]


def _cog_old(pack, vae, inputs, refs, **kw):
    extra = {}
    for i, (frames, caption) in enumerate(refs[1:], start=2):
        extra[f"reference_frames_{i}"], extra[f"ref_positive_{i}"] = frames, caption
    return pack.nodes.cog_conditioning.VAPCogConditioning.execute(
        **{**inputs, "ref_positive": refs[0][1]}, vae=vae, width=W, height=H, length=LENGTH,
        reference_frames=refs[0][0], **extra, **kw).args


def _cog_new(pack, vae, inputs, refs, **kw):
    encode = pack.nodes.reference_encode_nodes.VAPCogEncodeReference
    encoded = [encode.execute(vae, frames).args[0] for frames, _ in refs]
    extra = {}
    for i, (reference, (_, caption)) in enumerate(zip(encoded[1:], refs[1:]), start=2):
        extra[f"reference_{i}"], extra[f"ref_positive_{i}"] = reference, caption
    return pack.nodes.cog_reference_conditioning.VAPCogConditioningFromReference.execute(
        **{**inputs, "ref_positive": refs[0][1]}, vae=vae, reference=encoded[0], **extra, **kw).args


@pytest.mark.parametrize("n, latent_mode, batch, ref_negative", [
    (1, "sample", 1, False), (1, "mode", 1, True), (2, "sample", 2, True), (3, "sample", 1, False),
    (3, "mode", 1, False)])
def test_cog_pair_equals_the_one_node_conditioning(pack, cog_vae, cog_inputs, n, latent_mode, batch, ref_negative):
    """Encode Reference (posteriors) + Conditioning from Reference (official draws from the seed) == VAP CogVideoX
    Conditioning bit for bit: the image eps, every clip's eps then every first frame's eps of the one stream."""
    refs = _cog_refs(n)
    kw = {"batch_size": batch, "latent_mode": latent_mode, "seed": 77,
          "ref_negative": _text(40, 226, COG_DIM) if ref_negative else None}
    old = _cog_old(pack, cog_vae, cog_inputs, refs, **kw)
    new = _cog_new(pack, cog_vae, cog_inputs, refs, **kw)
    _same(list(old), list(new), "cog")
    ref_latent = new[0][0][1]["model_conds"][pack.vap_core.conds.REF_LATENT].cond
    assert ref_latent.shape == (1, 32, 2 * n, H // 8, W // 8)
    if latent_mode == "sample":  # the seed reaches the reference samples (drawn in the conditioning node)
        other = _cog_new(pack, cog_vae, cog_inputs, refs, **{**kw, "seed": 78})
        assert not torch.equal(other[0][0][1]["model_conds"][pack.vap_core.conds.REF_LATENT].cond, ref_latent)


def test_cog_conditioning_from_reference_encodes_only_the_start_image(pack, cog_vae, cog_inputs):
    """Each reference is encoded by its encode node (clip + first frame); the conditioning node, run again with
    another prompt or seed, encodes only the start image."""
    calls = []
    cc = pack.vap_core.cogvideox.conditioning
    posterior = cc.posterior

    def counting(vae, frames):
        calls.append(frames.shape[0])
        return posterior(vae, frames)
    cc.posterior = counting
    try:
        reference = pack.nodes.reference_encode_nodes.VAPCogEncodeReference.execute(cog_vae, _frames(10)).args[0]
        assert calls == [LENGTH, 1]
        for seed in (1, 2):
            pack.nodes.cog_reference_conditioning.VAPCogConditioningFromReference.execute(
                **{**cog_inputs, "positive": _text(50 + seed, 226, COG_DIM)}, vae=cog_vae, reference=reference,
                seed=seed)
        assert calls == [LENGTH, 1, 1, 1]
    finally:
        cc.posterior = posterior
    assert (reference.frames, reference.width, reference.height) == (LENGTH, W, H)
    assert reference.clip_mean.shape == reference.clip_logvar.shape == (1, 16, 2, H // 8, W // 8)
    assert reference.first_mean.shape == (1, 16, 1, H // 8, W // 8)


def test_cog_conditioning_errors_name_the_fix(pack, cog_vae, wan_vae, cog_inputs):
    nodes, errors = pack.nodes, pack.vap_core.errors.VAPInputError
    cond = nodes.cog_reference_conditioning.VAPCogConditioningFromReference
    encode = nodes.reference_encode_nodes.VAPCogEncodeReference
    reference = encode.execute(cog_vae, _frames(10)).args[0]
    with pytest.raises(errors, match="CogVideoX VAE"):
        encode.execute(wan_vae, _frames(10))
    wan_reference = nodes.reference_encode_nodes.VAPWanEncodeReference.execute(wan_vae, _frames(10), _clip(7)).args[0]
    with pytest.raises(errors, match="encoded by 'VAP Wan Encode Reference'.*'VAP CogVideoX Encode Reference'"):
        cond.execute(**cog_inputs, vae=cog_vae, reference=wan_reference)
    with pytest.raises(errors, match="encoded by 'VAP CogVideoX Encode Reference'.*'VAP Wan Encode Reference'"):
        nodes.wan_reference_conditioning.VAPWanConditioningFromReference.execute(
            **{k: v for k, v in cog_inputs.items()}, vae=wan_vae, reference=reference,
            clip_vision_start_image=_clip(6))
    longer = encode.execute(cog_vae, _frames(11, n=9)).args[0]
    with pytest.raises(errors, match="reference 2 is 9 frames of 32x16 but reference 1 is 5 frames"):
        cond.execute(**cog_inputs, vae=cog_vae, reference=reference, reference_2=longer,
                     ref_positive_2=cog_inputs["ref_positive"])
    with pytest.raises(errors, match="connect ref_positive_2 too"):
        cond.execute(**cog_inputs, vae=cog_vae, reference=reference, reference_2=reference)
    with pytest.raises(errors, match="connect reference_3 too"):
        cond.execute(**cog_inputs, vae=cog_vae, reference=reference, ref_positive_3=cog_inputs["ref_positive"])


# --------------------------------------------------------------------------------------------- schema

def test_schemas_registration_and_deprecation(pack):
    """The new nodes are registered with the VAP_REFERENCE type between them and no size or length widget on the
    conditioning nodes (the reference is the one place); the one-node conditionings keep their ids and inputs and
    are marked deprecated."""
    nodes = pack.nodes
    new = {"VAPWanEncodeReference": nodes.reference_encode_nodes.VAPWanEncodeReference,
           "VAPCogEncodeReference": nodes.reference_encode_nodes.VAPCogEncodeReference,
           "VAPWanConditioningFromReference": nodes.wan_reference_conditioning.VAPWanConditioningFromReference,
           "VAPCogConditioningFromReference": nodes.cog_reference_conditioning.VAPCogConditioningFromReference}
    for node_id, node in new.items():
        schema = node.define_schema()
        assert schema.node_id == node_id and node in nodes.NODE_LIST and not schema.is_deprecated
        assert all(i.tooltip for i in schema.inputs) and all(o.tooltip for o in schema.outputs)
        assert not any("Required." in (i.tooltip or "") for i in schema.inputs)
        assert "vap" in schema.search_aliases and schema.category.startswith("model/conditioning/")
        info = node.GET_SCHEMA().get_v1_info(node)
        ids = [i.id for i in schema.inputs]
        if "EncodeReference" in node_id:
            assert info.output == ["VAP_REFERENCE"]
        else:
            assert not {"width", "height", "length"} & set(ids)
            assert info.input["required"]["reference"][0] == "VAP_REFERENCE"
    cog_inputs = [i.id for i in new["VAPCogConditioningFromReference"].define_schema().inputs]
    assert {"reference_2", "reference_3", "ref_positive_2", "ref_positive_3"} <= set(cog_inputs)
    for old, ids in ((nodes.wan_conditioning.VAPWanConditioning, ["width", "height", "length", "reference_frames"]),
                     (nodes.cog_conditioning.VAPCogConditioning, ["width", "height", "length", "reference_frames_2"])):
        schema = old.define_schema()
        assert schema.is_deprecated and old in nodes.NODE_LIST
        assert set(ids) <= {i.id for i in schema.inputs}
        assert old.GET_SCHEMA().get_v1_info(old).deprecated is True
