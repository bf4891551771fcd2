"""VAP Wan Conditioning against the real host: the reference inputs equal an independent rebuild of the
official pipeline's (docs/OFFICIAL_MODEL.md#wan-pipeline), the target stays core WanImageToVideo, and user errors are clear."""
import pytest
import torch

from wan_fixtures import convert_and_load, write_official_folder

W, H, LENGTH = 32, 16, 5          # latent [F=2, h=2, w=4]
TEXT_DIM = 32

# Wan2.1 VAE config (latents_mean / latents_std), written out here independently of comfy.latent_formats
LATENTS_MEAN = [-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
                0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921]
LATENTS_STD = [2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
               3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160]


# ------------------------------------------------------------------------------------ fixtures

@pytest.fixture(scope="module")
def vae(pack):
    import comfy.sd
    from vap_headless.demo.tiny_vae import make_tiny_wan_vae_state_dict
    return comfy.sd.VAE(sd=make_tiny_wan_vae_state_dict(dim=8, seed=0))


def _text(seed, valid=17, tokens=512):
    """A conditioning as CLIP Text Encode (UMT5) gives it: states zero beyond the prompt."""
    g = torch.Generator().manual_seed(seed)
    states = torch.zeros(1, tokens, TEXT_DIM)
    states[:, :valid] = torch.randn(1, valid, TEXT_DIM, generator=g)
    return [[states, {"pooled_output": None}]]


def _clip(seed, n=1):
    import comfy.clip_vision
    g = torch.Generator().manual_seed(seed)
    out = comfy.clip_vision.Output()
    out["penultimate_hidden_states"] = torch.randn(n, 257, 1280, generator=g)
    out["last_hidden_state"] = torch.randn(n, 257, 1280, generator=g)
    out["image_embeds"] = torch.randn(n, 1024, generator=g)
    return out


def _frames(seed, n=LENGTH, h=H, w=W):
    return torch.rand(n, h, w, 3, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def inputs(pack):
    return {
        "positive": _text(1), "negative": _text(2, valid=40), "ref_positive": _text(3, valid=9),
        "start_image": _frames(4, n=1), "reference_frames": _frames(5),
        "clip_vision_start_image": _clip(6), "clip_vision_reference": _clip(7, n=LENGTH),
    }


def _run(pack, vae, inputs, **over):
    kw = {**inputs, "vae": vae, "width": W, "height": H, "length": LENGTH, "batch_size": 1, **over}
    return pack.nodes.wan_conditioning.VAPWanConditioning.execute(**kw).args


@pytest.fixture(scope="module")
def result(pack, vae, inputs):
    return _run(pack, vae, inputs)


def _conds(conditioning, i=0):
    return conditioning[i][1]["model_conds"]


def _keys(pack):
    wa = pack.vap_core.wan.apply
    return wa.REF_LATENT, wa.REF_CONTEXT, wa.REF_CLIP


# ------------------------------------------------------- independent rebuild of the official inputs

def _official_encode(vae, video):
    """Official: vae.encode(video).latent_dist.mode(), then (z - mean) * (1 / std). video [1,3,T,H,W] in -1..1."""
    with torch.no_grad():
        mode = vae.first_stage_model.encode(video.float())  # ComfyUI's WanVAE returns the posterior mean
    mean = torch.tensor(LATENTS_MEAN).view(1, 16, 1, 1, 1)
    inv_std = 1.0 / torch.tensor(LATENTS_STD).view(1, 16, 1, 1, 1)
    return (mode - mean) * inv_std


def _official_mask(num_frames, h, w):
    """The official prepare_latents mask: pixel frame 0 = 1, repeated x4, folded into 4 channels."""
    mask = torch.ones(1, 1, num_frames, h, w)
    mask[:, :, 1:] = 0
    first = torch.repeat_interleave(mask[:, :, 0:1], dim=2, repeats=4)
    mask = torch.cat([first, mask[:, :, 1:]], dim=2)
    return mask.view(1, -1, 4, h, w).transpose(1, 2)


def _official_image_condition(vae, first_frame01, num_frames):
    image = first_frame01.permute(2, 0, 1)[None, :, None] * 2 - 1          # [1,3,1,H,W] in -1..1
    video = torch.cat([image, image.new_zeros(1, 3, num_frames - 1, *image.shape[-2:])], dim=2)
    return _official_encode(vae, video)


def _official_hidden_states_mot_ref(vae, frames01):
    n = frames01.shape[0]
    ref_video = frames01.permute(3, 0, 1, 2)[None] * 2 - 1                   # [1,3,T,H,W]
    clean = _official_encode(vae, ref_video)
    cond = _official_image_condition(vae, frames01[0], n)
    mask = _official_mask(n, cond.shape[-2], cond.shape[-1])
    return torch.cat([clean, torch.cat([mask, cond], dim=1)], dim=1)


def _pad512(states):
    out = torch.zeros(1, 512, states.shape[-1])
    n = min(512, states.shape[1])
    out[:, :n] = states[:, :n]
    return out


# ------------------------------------------------------------------------------------ reference

def test_reference_latent_equals_official(pack, vae, inputs, result):
    positive, negative, latent = result
    ref_latent_key = _keys(pack)[0]
    got = _conds(positive)[ref_latent_key].cond
    want = _official_hidden_states_mot_ref(vae, inputs["reference_frames"])
    assert got.shape == (1, 36, 2, H // 8, W // 8) and got.dtype == torch.float32
    assert not got.requires_grad  # no autograd graph of the VAE kept alive in the conditioning
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    # mask channels exactly: latent frame 0 ones, the rest zeros
    assert torch.equal(got[:, 16:20, 0], torch.ones_like(got[:, 16:20, 0]))
    assert torch.equal(got[:, 16:20, 1:], torch.zeros_like(got[:, 16:20, 1:]))
    # the negative pass sees the very same reference video (only the texts differ)
    assert torch.equal(_conds(negative)[ref_latent_key].cond, got)


def test_text_and_clip_inputs(pack, inputs, result):
    import comfy.conds
    positive, negative, _ = result
    _, ctx, clip = _keys(pack)
    for conditioning in (positive, negative):
        for key in _keys(pack):
            assert type(_conds(conditioning)[key]) is comfy.conds.CONDRegular
    # positive: the reference caption; negative: the target negative (official negative_prompt_mot_ref default)
    assert torch.equal(_conds(positive)[ctx].cond, _pad512(inputs["ref_positive"][0][0]))
    assert torch.equal(_conds(negative)[ctx].cond, _pad512(inputs["negative"][0][0]))
    assert not torch.equal(_conds(positive)[ctx].cond, _conds(negative)[ctx].cond)
    # CLIP: penultimate states of the reference's FIRST frame, same on both passes
    want_clip = inputs["clip_vision_reference"].penultimate_hidden_states[:1]
    assert _conds(positive)[clip].cond.shape == (1, 257, 1280)
    assert torch.equal(_conds(positive)[clip].cond, want_clip)
    assert torch.equal(_conds(negative)[clip].cond, want_clip)


def test_ref_negative_input_and_text_length(pack, vae, inputs):
    _, ctx, _ = _keys(pack)
    ref_negative = _text(8, valid=5, tokens=600)              # longer than 512: truncated
    ref_positive = _text(9, valid=30, tokens=77)               # shorter: zero padded
    positive, negative, _ = _run(pack, vae, inputs, ref_positive=ref_positive, ref_negative=ref_negative)
    assert _conds(positive)[ctx].cond.shape == (1, 512, TEXT_DIM)
    assert torch.equal(_conds(positive)[ctx].cond, _pad512(ref_positive[0][0]))
    assert torch.equal(_conds(negative)[ctx].cond, ref_negative[0][0][:, :512])
    # the target texts are untouched
    assert positive[0][0] is inputs["positive"][0][0] and negative[0][0] is inputs["negative"][0][0]


def test_inputs_are_not_modified(pack, inputs, result):
    for name in ("positive", "negative", "ref_positive"):
        assert "model_conds" not in inputs[name][0][1]
        assert "concat_latent_image" not in inputs[name][0][1]


# --------------------------------------------------------------------------------------- target

def test_target_is_core_wan_image_to_video(pack, vae, inputs, result):
    from comfy_extras.nodes_wan import WanImageToVideo
    positive, negative, latent = result
    core_pos, core_neg, core_latent = WanImageToVideo.execute(
        inputs["positive"], inputs["negative"], vae, W, H, LENGTH, 1, start_image=inputs["start_image"],
        clip_vision_output=inputs["clip_vision_start_image"]).args
    assert latent["samples"].shape == (1, 16, 2, H // 8, W // 8) == core_latent["samples"].shape
    assert torch.equal(latent["samples"], core_latent["samples"])
    for ours, core in ((positive, core_pos), (negative, core_neg)):
        assert set(ours[0][1]) - set(core[0][1]) == {"model_conds"}
        assert torch.equal(ours[0][1]["concat_latent_image"], core[0][1]["concat_latent_image"])
        assert torch.equal(ours[0][1]["concat_mask"], core[0][1]["concat_mask"])
        assert ours[0][1]["clip_vision_output"] is inputs["clip_vision_start_image"]


def test_batch_size(pack, vae, inputs):
    _, _, latent = _run(pack, vae, inputs, batch_size=2)
    assert latent["samples"].shape == (2, 16, 2, H // 8, W // 8)


def test_target_and_reference_channels_inside_comfy_match_official(pack, vae, inputs, result, tmp_path):
    """Inside ComfyUI's WAN21 (concat_cond inverts concat_mask) the target's 20 extra channels equal the
    official [mask 1 on frame 0, normalised image condition]; the reference channels use that same layout.
    Also: the reference conds survive the sampler's cond processing next to c_concat / clip_fea."""
    import comfy.model_management
    import comfy.sampler_helpers
    import comfy.samplers
    from vap_headless.demo.tiny_wan import official_wan_mot_state_dict
    sd, cfg = official_wan_mot_state_dict({"text_dim": TEXT_DIM, "ffn_dim": 32, "num_layers": 1}, seed=2)
    write_official_folder(str(tmp_path / "vap"), sd, cfg)
    base, _, _ = convert_and_load(pack, str(tmp_path / "vap"), str(tmp_path))
    model = base.model
    positive, negative, latent = result
    noise = torch.randn(latent["samples"].shape, generator=torch.Generator().manual_seed(0))
    device = comfy.model_management.intermediate_device()

    target = model.concat_cond(noise=noise, device=device, **{k: positive[0][1][k] for k in ("concat_latent_image", "concat_mask")})
    want_mask = _official_mask(LENGTH, H // 8, W // 8)
    want_cond = _official_image_condition(vae, inputs["start_image"][0], LENGTH)
    assert torch.equal(target[:, :4], want_mask)
    torch.testing.assert_close(target[:, 4:], want_cond, rtol=1e-5, atol=1e-5)
    ref = _conds(positive)[_keys(pack)[0]].cond
    assert torch.equal(ref[:, 16:20], target[:, :4])

    for conditioning, prompt_type in ((positive, "positive"), (negative, "negative")):
        conds = comfy.sampler_helpers.convert_cond(conditioning)
        conds = comfy.samplers.encode_model_conds(model.extra_conds, conds, noise, device, prompt_type,
                                                  latent_image=latent["samples"], denoise_mask=None, seed=0)
        mc = conds[0]["model_conds"]
        assert {"c_concat", "c_crossattn", "clip_fea", *_keys(pack)} <= set(mc)
        torch.testing.assert_close(mc["c_concat"].cond, target)
        assert mc[_keys(pack)[0]].cond is ref


def test_reference_is_resized_to_the_target(pack, vae, inputs):
    frames = _frames(10, h=24, w=40)
    positive, _, _ = _run(pack, vae, inputs, reference_frames=frames)
    assert _conds(positive)[_keys(pack)[0]].cond.shape == (1, 36, 2, H // 8, W // 8)


def test_a_shorter_reference_is_taken_whole(pack, vae, inputs):
    """A reference of fewer 4k+1 frames than the video (a 49-frame reference for a long video sampled with context
    windows) is encoded at its own length; the target keeps its own."""
    positive, negative, latent = _run(pack, vae, inputs, length=9)
    assert latent["samples"].shape[2] == 3
    for conditioning in (positive, negative):
        assert _conds(conditioning)[_keys(pack)[0]].cond.shape == (1, 36, 2, H // 8, W // 8)


def test_a_shorter_reference_needs_4k_plus_1_frames(pack, vae, inputs):
    with pytest.raises(pack.vap_core.errors.VAPInputError) as err:
        _run(pack, vae, inputs, length=13, reference_frames=_frames(5, n=7))
    for word in ("7 frames", "4k+1", "num_frames = 5", "length 13"):
        assert word in str(err.value)


# --------------------------------------------------------------------------------------- errors

@pytest.mark.parametrize("over, words", [
    ({"width": 40}, ["multiples of 16", "40x16"]),
    ({"height": 24}, ["multiples of 16"]),
    ({"length": 6}, ["4k+1", "5 or 9"]),
    ({"reference_frames": torch.rand(9, H, W, 3)}, ["9 frames", "num_frames = 5"]),
    ({"clip_vision_start_image": None}, ["clip_vision_start_image", "CLIP Vision Encode"]),
    ({"clip_vision_reference": None}, ["clip_vision_reference", "first selected frame"]),
    ({"ref_positive": _text(11) + _text(12)}, ["ref_positive", "exactly one reference"]),
])
def test_clear_errors(pack, vae, inputs, over, words):
    with pytest.raises(pack.vap_core.errors.VAPInputError) as err:
        _run(pack, vae, inputs, **over)
    for word in words:
        assert word in str(err.value)


def test_second_reference_is_refused(pack, vae, inputs, result):
    positive, negative, _ = result
    for over in ({"positive": positive}, {"negative": negative}):
        with pytest.raises(pack.vap_core.errors.VAPInputError, match="exactly one reference"):
            _run(pack, vae, inputs, **over)


def test_image_vae_is_refused(pack, inputs):
    """A non-Wan VAE (here a real TAESD image autoencoder, small enough to build) gets a clear error."""
    import comfy.sd
    import comfy.taesd.taesd
    taesd = comfy.sd.VAE(sd=comfy.taesd.taesd.TAESD(latent_channels=4).state_dict())
    assert taesd.latent_dim == 2
    with pytest.raises(pack.vap_core.errors.VAPInputError, match="wan_2.1_vae"):
        _run(pack, taesd, inputs)


# ---------------------------------------------------------------------------------------- schema

def test_schema_and_registration(pack):
    node = pack.nodes.wan_conditioning.VAPWanConditioning
    schema = node.define_schema()
    assert schema.node_id == "VAPWanConditioning" and schema.display_name == "VAP Wan Conditioning"
    assert schema.category == "model/conditioning/wan/vap"
    names = [i.id for i in schema.inputs]
    for name in ("positive", "negative", "ref_positive", "ref_negative", "vae", "width", "height", "length",
                 "batch_size", "start_image", "clip_vision_start_image", "clip_vision_reference", "reference_frames"):
        assert name in names
    assert all(i.tooltip for i in schema.inputs) and all(o.tooltip for o in schema.outputs)
    defaults = {i.id: i.default for i in schema.inputs if hasattr(i, "default")}
    assert (defaults["width"], defaults["height"], defaults["length"]) == (832, 480, 49)
    assert node in pack.nodes.NODE_LIST


def test_long_target_prompts_are_cut_to_512_tokens(pack, vae, inputs, caplog):
    """As the official pipeline (max_sequence_length 512) does for the prompt and the negative prompt."""
    long_positive, long_negative = _text(70, valid=600, tokens=700), _text(71, valid=520, tokens=600)
    with caplog.at_level("WARNING"):
        positive, negative, _ = _run(pack, vae, inputs, positive=long_positive, negative=long_negative)
    assert torch.equal(positive[0][0], long_positive[0][0][:, :512])
    assert torch.equal(negative[0][0], long_negative[0][0][:, :512])
    assert "the prompt has 700 tokens" in caplog.text and "the negative prompt has 600 tokens" in caplog.text
