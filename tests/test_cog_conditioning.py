"""VAP CogVideoX Conditioning against the real host: the target image condition and the reference inputs equal
an independent rebuild of the official pipeline's (docs/OFFICIAL_MODEL.md#cogvideox-pipeline), 1 to 3 references, posterior sample or mode,
and clear errors."""
import pytest
import torch

W, H, LENGTH = 32, 16, 5          # latent [F=2, h=2, w=4]
TEXT_DIM = 24
TOKENS = 226
SCALE_5B = 0.7                    # CogVideoX-5B VAE config scaling_factor (written out, not read from ComfyUI)


@pytest.fixture(scope="module")
def vae(pack):
    import comfy.sd
    from vap_headless.demo.tiny_vae import make_tiny_cog_vae_state_dict
    return comfy.sd.VAE(sd=make_tiny_cog_vae_state_dict(seed=0))


def _text(seed, tokens=TOKENS):
    """A conditioning as CLIP Text Encode (T5, type cogvideox) gives it: 226 states, padding not zeroed."""
    return [[torch.randn(1, tokens, TEXT_DIM, generator=torch.Generator().manual_seed(seed)), {"pooled_output": None}]]


def _frames(seed, n=LENGTH, h=H, w=W):
    return torch.rand(n, h, w, 3, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def inputs(pack):
    return {"positive": _text(1), "negative": _text(2), "ref_positive": _text(3),
            "start_image": _frames(4, n=1), "reference_frames": _frames(5)}


def _run(pack, vae, inputs, **over):
    kw = {**inputs, "vae": vae, "width": W, "height": H, "length": LENGTH, "batch_size": 1, **over}
    return pack.nodes.cog_conditioning.VAPCogConditioning.execute(**kw).args


def _conds(conditioning, i=0):
    return conditioning[i][1]["model_conds"]


def _keys(pack):
    ca = pack.vap_core.cogvideox.apply
    return ca.REF_LATENT, ca.REF_CONTEXT, ca.REF_COUNT


def _official_bounds(t, step=8):
    """diffusers ``AutoencoderKLCogVideoX._encode``'s frame chunks, written out: max(t // 8, 1) chunks, the FIRST
    one carrying the remainder ([0 : 8 + t % 8]), then 8 at a time. 9 or 13 frames: one chunk; 17: [0:9], [9:17]."""
    rest = t % step
    return [(step * i + (0 if i == 0 else rest), step * (i + 1) + rest) for i in range(max(t // step, 1))]


def _official_distribution(vae, video):
    """Official ``vae.encode(video).latent_dist`` parameters for video [1, 3, T, H, W] in -1..1, rebuilt from
    ComfyUI's encoder (the official network) in the official chunks with the causal cache carried, moments split
    into mean | logvar."""
    model = vae.first_stage_model
    cache, out = None, []
    with torch.no_grad():
        for a, b in _official_bounds(video.shape[2]):
            chunk, cache = model.encoder(video[:, :, a:b].to(vae.vae_dtype), conv_cache=cache)
            out.append(chunk.float())
    mean, logvar = torch.cat(out, 2).chunk(2, dim=1)
    return mean, logvar.clamp(-30.0, 20.0)


def _video(frames):
    """IMAGE [T, H, W, 3] in 0..1 -> [1, 3, T, H, W] in -1..1 (official preprocessing after the resize)."""
    return (frames.movedim(-1, 0).unsqueeze(0) * 2 - 1)


def _official_mode_reference(vae, frames):
    """Official ref latents with the posterior mean: cat(clip, first frame padded to F) on channels, x0.7."""
    clip, _ = _official_distribution(vae, _video(frames))
    first, _ = _official_distribution(vae, _video(frames[:1]))
    first = torch.cat([first, first.new_zeros(first.shape[:2] + (clip.shape[2] - 1,) + first.shape[3:])], 2)
    return torch.cat([clip, first], 1) * SCALE_5B


# ------------------------------------------------------------------------------------------ tests

def test_posterior_uses_the_official_frame_chunks(pack, vae):
    """The pack's posterior is the official one (first chunk [0 : 8 + T % 8]): equal to VAE Encode where both loops
    make the same chunks (1 or 5 frames), and NOT equal where ComfyUI's encode puts the remainder in a chunk of its
    own (9 frames: [0:1] + [1:9]; 13: [0:5] + [5:13]; 17: [0:1] + [1:9] + [9:17])."""
    cc = pack.vap_core.cogvideox.conditioning
    for n in (1, LENGTH, 9, 13, 17):
        frames = _frames(10 + n, n=n)
        mean, logvar = cc.posterior(vae, frames)
        expected_mean, expected_logvar = _official_distribution(vae, _video(frames))
        assert torch.equal(mean, expected_mean), n
        assert torch.equal(logvar.clamp(-30.0, 20.0), expected_logvar), n
        same_chunks = n % 8 == n   # fewer than 8 frames: one chunk in both loops
        assert torch.equal(mean, vae.encode(frames).float()) == same_chunks, n


def test_mode_inputs_equal_official_rebuild(pack, vae, inputs):
    positive, negative, latent = _run(pack, vae, inputs, latent_mode="mode")
    ref_key, ctx_key, count_key = _keys(pack)
    expected_ref = _official_mode_reference(vae, inputs["reference_frames"])
    image, _ = _official_distribution(vae, _video(inputs["start_image"]))
    for conditioning in (positive, negative):
        d = conditioning[0][1]
        torch.testing.assert_close(d["model_conds"][ref_key].cond, expected_ref, rtol=0, atol=1e-6)
        # the target image latent stays unscaled: core CogVideoX.concat_cond applies the model's scale
        torch.testing.assert_close(d["concat_latent_image"], image, rtol=0, atol=1e-6)
        assert d["model_conds"][count_key].cond == 1
    assert expected_ref.shape == (1, 32, 2, H // 8, W // 8)
    torch.testing.assert_close(_conds(positive)[ctx_key].cond, inputs["ref_positive"][0][0], rtol=0, atol=0)
    # official negative pass: the negative prompt for the reference branch too
    torch.testing.assert_close(_conds(negative)[ctx_key].cond, inputs["negative"][0][0], rtol=0, atol=0)
    assert latent["samples"].shape == (1, 16, 2, H // 8, W // 8) and not latent["samples"].any()
    # inputs untouched
    assert "model_conds" not in inputs["positive"][0][1]


def _official_stream(seed, n_refs, latent_frames, batch=1):
    """The official one-generator order, written out: image eps, the noise [B, F, 16, h, w], every reference
    clip's eps, every reference first frame's eps."""
    g = torch.Generator().manual_seed(seed)
    h, w = H // 8, W // 8
    image = torch.randn(1, 16, 1, h, w, generator=g)
    noise = torch.randn(batch, latent_frames, 16, h, w, generator=g)
    clips = [torch.randn(1, 16, latent_frames, h, w, generator=g) for _ in range(n_refs)]
    firsts = [torch.randn(1, 16, 1, h, w, generator=g) for _ in range(n_refs)]
    return image, noise, clips, firsts


@pytest.mark.parametrize("n, batch", [(1, 1), (2, 1), (1, 2)])
def test_sample_mode_replays_the_official_stream(pack, vae, inputs, n, batch):
    """sample: mean + exp(logvar/2) * eps with eps from ONE CPU generator seeded with `seed`, in the official order
    (image, [noise], every clip, every first frame); the noise numbers are skipped, not reused."""
    extra = {"reference_frames_2": _frames(22), "ref_positive_2": _text(32)} if n == 2 else {}
    positive, _, _ = _run(pack, vae, inputs, latent_mode="sample", seed=123, batch_size=batch, **extra)
    clips_in = [inputs["reference_frames"]] + ([extra["reference_frames_2"]] if n == 2 else [])
    image_eps, _, clip_eps, first_eps = _official_stream(123, n, 2, batch)

    def sample(frames, eps):
        mean, logvar = _official_distribution(vae, _video(frames))
        return mean + torch.exp(0.5 * logvar) * eps

    image = sample(inputs["start_image"], image_eps)
    refs = []
    for clip_frames, c_eps, f_eps in zip(clips_in, clip_eps, first_eps):
        clip = sample(clip_frames, c_eps)
        first = sample(clip_frames[:1], f_eps)
        first = torch.cat([first, first.new_zeros(first.shape[:2] + (clip.shape[2] - 1,) + first.shape[3:])], 2)
        refs.append(torch.cat([clip, first], 1) * SCALE_5B)
    ref_key = _keys(pack)[0]
    torch.testing.assert_close(positive[0][1]["concat_latent_image"], image, rtol=0, atol=1e-6)
    torch.testing.assert_close(_conds(positive)[ref_key].cond, torch.cat(refs, 2), rtol=0, atol=1e-6)
    again, _, _ = _run(pack, vae, inputs, latent_mode="sample", seed=123, batch_size=batch, **extra)
    other, _, _ = _run(pack, vae, inputs, latent_mode="sample", seed=124, batch_size=batch, **extra)
    assert torch.equal(_conds(again)[ref_key].cond, _conds(positive)[ref_key].cond)
    assert not torch.allclose(_conds(other)[ref_key].cond, _conds(positive)[ref_key].cond)
    mode, _, _ = _run(pack, vae, inputs, latent_mode="mode", batch_size=batch, **extra)
    assert not torch.allclose(_conds(mode)[ref_key].cond, _conds(positive)[ref_key].cond)


@pytest.mark.parametrize("n", [2, 3])
def test_several_references_concatenate_in_order(pack, vae, inputs, n):
    extra = {}
    frames = [inputs["reference_frames"]] + [_frames(20 + i) for i in range(2, n + 1)]
    captions = [inputs["ref_positive"]] + [_text(30 + i) for i in range(2, n + 1)]
    for i in range(2, n + 1):
        extra[f"reference_frames_{i}"], extra[f"ref_positive_{i}"] = frames[i - 1], captions[i - 1]
    neg_ref = _text(40)
    positive, negative, _ = _run(pack, vae, inputs, latent_mode="mode", ref_negative=neg_ref, **extra)
    ref_key, ctx_key, count_key = _keys(pack)
    expected = torch.cat([_official_mode_reference(vae, f) for f in frames], dim=2)
    torch.testing.assert_close(_conds(positive)[ref_key].cond, expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(_conds(positive)[ctx_key].cond, torch.cat([c[0][0] for c in captions], 1), rtol=0, atol=0)
    torch.testing.assert_close(_conds(negative)[ctx_key].cond, neg_ref[0][0].repeat(1, n, 1), rtol=0, atol=0)
    assert _conds(positive)[count_key].cond == n and _conds(negative)[count_key].cond == n


def test_longer_captions_are_cut_to_226_tokens(pack, vae, inputs):
    long = _text(50, tokens=300)
    positive, _, _ = _run(pack, vae, inputs, latent_mode="mode", ref_positive=long)
    torch.testing.assert_close(_conds(positive)[_keys(pack)[1]].cond, long[0][0][:, :TOKENS], rtol=0, atol=0)


def test_core_concat_cond_gives_the_official_image_latents(pack, vae, inputs, tmp_path):
    """Through core ``CogVideoX.concat_cond``: the stored start-image latent x the model's latent scale,
    zero-padded to the video's frames (official ``image_latents``); 5B-class bases use 0.7."""
    import comfy.supported_models
    from cog_fixtures import tiny_case
    base, _, _ = tiny_case(pack, str(tmp_path))
    positive, _, _ = _run(pack, vae, inputs, latent_mode="mode")
    image = positive[0][1]["concat_latent_image"]
    noise = torch.randn(1, 16, 2, H // 8, W // 8)
    cond = base.model.concat_cond(noise=noise, concat_latent_image=image.clone(), device="cpu")
    scale = base.model.latent_format.scale_factor
    expected = torch.cat([image * scale, torch.zeros_like(image)], dim=2)
    torch.testing.assert_close(cond, expected, rtol=0, atol=1e-6)
    five_b = comfy.supported_models.CogVideoX_I2V({"image_model": "cogvideox", "in_channels": 32,
                                                   "num_attention_heads": 48})
    assert five_b.latent_format.scale_factor == SCALE_5B == pack.vap_core.cogvideox.conditioning.latent_scale()


# ------------------------------------------------------------------------------------------ errors

def _error(pack, vae, inputs, **over):
    from comfyui_vap.vap_core.errors import VAPInputError
    with pytest.raises(VAPInputError) as info:
        _run(pack, vae, inputs, **over)
    return str(info.value)


def test_wan_vae_is_refused(pack, inputs):
    import comfy.sd
    from vap_headless.demo.tiny_vae import make_tiny_wan_vae_state_dict
    wan_vae = comfy.sd.VAE(sd=make_tiny_wan_vae_state_dict(dim=8, seed=0))
    message = _error(pack, wan_vae, inputs)
    assert "CogVideoX VAE" in message and "Load VAE" in message


def test_cog_vae_is_refused_by_the_wan_node(pack, vae):
    from comfyui_vap.vap_core.errors import VAPInputError
    with pytest.raises(VAPInputError, match="CogVideoX VAE.*wan_2.1_vae"):
        pack.vap_core.wan.conditioning.check_vae(vae)


@pytest.mark.parametrize("over, words", [
    ({"length": 6}, ["4k+1", "use 5 or 9"]),
    ({"width": 40}, ["multiples of 16", "720x480"]),
    ({"reference_frames": _frames(5, n=LENGTH + 4)}, ["9 frames", "num_frames = 5"]),
    ({"reference_frames_2": _frames(6)}, ["reference 2", "ref_positive_2"]),
    ({"ref_positive_3": _text(7)}, ["reference 3", "reference_frames_3"]),
    ({"ref_positive": _text(8, tokens=77)}, ["77 text tokens", "cogvideox"]),
    ({"ref_negative": _text(9, tokens=256)[:1] * 2}, ["2 conditionings"]),
    ({"latent_mode": "argmax"}, ["latent_mode"]),
    ({"start_image": None}, ["start_image"]),
])
def test_clear_input_errors(pack, vae, inputs, over, words):
    message = _error(pack, vae, inputs, **over)
    for word in words:
        assert word in message, message


def test_chaining_two_conditioning_nodes_is_refused(pack, vae, inputs):
    positive, negative, _ = _run(pack, vae, inputs, latent_mode="mode")
    message = _error(pack, vae, inputs, positive=positive, negative=negative)
    assert "already carries a VAP reference" in message and "up to 3" in message


def test_long_target_prompts_are_cut_to_226_tokens_before_sampling(pack, vae, inputs, caplog):
    """The official pipeline truncates the prompt and the negative prompt at 226 tokens; a longer target prompt
    must not reach the model (its joint attention splits text from video at 226 per stream)."""
    long_positive, long_negative = _text(60, tokens=700), _text(61, tokens=300)
    with caplog.at_level("WARNING"):
        positive, negative, _ = _run(pack, vae, inputs, latent_mode="mode", positive=long_positive,
                                     negative=long_negative)
    assert torch.equal(positive[0][0], long_positive[0][0][:, :TOKENS])
    assert torch.equal(negative[0][0], long_negative[0][0][:, :TOKENS])
    assert "the prompt has 700 tokens" in caplog.text and "the negative prompt has 300 tokens" in caplog.text
    # prompts already at 226 pass through as they are
    positive, _, _ = _run(pack, vae, inputs, latent_mode="mode")
    assert torch.equal(positive[0][0], inputs["positive"][0][0])


def test_short_target_prompt_is_refused_in_the_node(pack, vae, inputs):
    from comfyui_vap.vap_core.errors import VAPInputError
    with pytest.raises(VAPInputError, match="the negative prompt has 77 text tokens.*type 'cogvideox'"):
        _run(pack, vae, inputs, negative=_text(62, tokens=77))
