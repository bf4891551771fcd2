"""What a ComfyUI user sees while VAP works: core latent previews during VAP sampling (SamplerCustomAdvanced with
the VAP Reference Guider, and KSampler's route), and progress + Cancel while a long reference clip is decoded."""
import numpy as np
import pytest
import torch

from test_reference_video import make_video
from wan_fixtures import convert_and_load, random_inputs, write_official_folder
from test_reference_guidance import WAN_CONFIG, _wan_conds


@pytest.fixture
def progress_hook():
    """ComfyUI's global progress hook (what the server sends to the UI), recording (value, total, preview)."""
    import comfy.model_management
    import comfy.utils
    seen = []
    before = comfy.utils.PROGRESS_BAR_HOOK
    comfy.utils.set_progress_bar_global_hook(lambda value, total, preview, node_id=None: seen.append((value, total, preview)))
    try:
        yield seen
    finally:
        comfy.utils.set_progress_bar_global_hook(before)
        comfy.model_management.interrupt_current_processing(False)


@pytest.fixture
def latent2rgb_previews():
    """The server's --preview-method latent2rgb."""
    import latent_preview
    from comfy.cli_args import LatentPreviewMethod, args
    before = args.preview_method
    args.preview_method = LatentPreviewMethod.Latent2RGB
    yield latent_preview
    args.preview_method = before


@pytest.fixture(scope="module")
def wan(pack, tmp_path_factory):
    from vap_headless.demo.tiny_wan import official_wan_mot_state_dict
    tmp = tmp_path_factory.mktemp("previews_wan")
    sd, cfg = official_wan_mot_state_dict(WAN_CONFIG, seed=3)
    write_official_folder(str(tmp / "vap"), sd, cfg)
    base, expert, _ = convert_and_load(pack, str(tmp / "vap"), str(tmp))
    return {"model": pack.vap_core.expert.loading.apply_expert(base, expert), "i": random_inputs(cfg, seed=4)}


def _images(seen):
    return [(v, t, p[1]) for v, t, p in seen if p is not None]


def test_previews_while_vap_samples_with_the_reference_guider(pack, wan, progress_hook, latent2rgb_previews):
    """SamplerCustomAdvanced (core) with the VAP Reference Guider: one latent preview per step, the last one is the
    preview of the sampler's final x0 (its 'denoised_output')."""
    import comfy_extras.nodes_custom_sampler as ncs
    positive, negative = _wan_conds(pack, wan["i"])
    guider = pack.nodes.reference_guider.VAPReferenceGuider.execute(wan["model"], positive, negative, 5.0, 1.0,
                                                                     False, False).args[0]
    steps = 3
    latent = {"samples": torch.zeros(1, 16, *wan["i"]["x"].shape[2:])}
    sigmas = torch.linspace(1.0, 0.0, steps + 1)
    out = ncs.SamplerCustomAdvanced.execute(ncs.Noise_RandomNoise(0), guider, comfy_sampler("euler"), sigmas, latent)
    x0 = out.args[1]["samples"]
    previews = _images(progress_hook)
    assert [(v, t) for v, t, _ in previews] == [(k, steps) for k in range(1, steps + 1)]
    expected = latent2rgb_previews.get_previewer("cpu", wan["model"].model.latent_format) \
        .decode_latent_to_preview_image("JPEG", wan["model"].model.process_latent_in(x0))[1]
    # the sampler hands x0 back through process_latent_out; back in model space it is equal up to float rounding
    diff = np.abs(np.asarray(previews[-1][2]).astype(int) - np.asarray(expected).astype(int))
    assert previews[-1][2].size == expected.size and diff.max() <= 2
    assert len({np.asarray(p).tobytes() for _, _, p in previews}) > 1  # the previews follow the sampling


def test_previews_on_the_ksampler_route(pack, wan, progress_hook, latent2rgb_previews):
    """What core KSampler does (common_ksampler): comfy.sample.sample with latent_preview.prepare_callback."""
    import comfy.sample
    positive, negative = _wan_conds(pack, wan["i"])
    steps, got = 2, []
    callback = latent2rgb_previews.prepare_callback(wan["model"], steps)

    def recording(step, x0, x, total):
        got.append((step, tuple(x0.shape)))
        return callback(step, x0, x, total)
    latent = torch.zeros(1, 16, *wan["i"]["x"].shape[2:])
    comfy.sample.sample(wan["model"], torch.randn(latent.shape), steps, 4.0, "euler", "simple", positive, negative,
                        latent, callback=recording, disable_pbar=True, seed=0)
    assert got == [(k, (1, 16, *latent.shape[2:])) for k in range(steps)]
    assert [(v, t) for v, t, _ in _images(progress_hook)] == [(1, steps), (2, steps)]


# ---------------------------------------------------------------------------------------------- reference decoding

def _load_node(pack, path, num_frames=9, **kw):
    import folder_paths
    return pack.nodes.reference_nodes.VAPLoadReferenceVideo.execute(
        file=path, frame_selection="evenly", num_frames=num_frames, width=32, height=32, resize_mode="stretch",
        seed=0, **kw)


def test_decoding_a_long_reference_reports_progress(pack, tmp_path, progress_hook):
    n = 250
    path = make_video(tmp_path / "long.mp4", n, preset="ultrafast")
    frames = _load_node(pack, path).args[0]
    assert frames.shape == (9, 32, 32, 3)
    updates = [(v, t) for v, t, p in progress_hook if p is None]
    assert updates and all(t == n for _, t in updates)
    assert updates[-1] == (n, n) and [v for v, _ in updates] == sorted(v for v, _ in updates)


def test_resizing_an_images_batch_reports_progress(pack, progress_hook):
    images = torch.rand(40, 24, 24, 3)
    out = pack.nodes.reference_nodes.VAPLoadReferenceVideo.execute(
        file=None, frame_selection="first", num_frames=33, width=32, height=32, resize_mode="stretch", seed=0,
        images=images).args[0]
    assert out.shape == (33, 32, 32, 3)
    updates = [(v, t) for v, t, p in progress_hook if p is None]
    assert updates[-1] == (33, 33)


def test_cancel_stops_decoding_a_long_reference(pack, tmp_path, progress_hook):
    """Cancel (ComfyUI's interrupt flag) set while the clip decodes stops the decode at the next frame."""
    import comfy.model_management
    import comfy.utils
    n = 250
    path = make_video(tmp_path / "long.mp4", n, preset="ultrafast")
    values = []

    def cancel_on_first_update(value, total, preview, node_id=None):
        values.append(value)
        comfy.model_management.interrupt_current_processing(True)  # the user presses Cancel
    comfy.utils.set_progress_bar_global_hook(cancel_on_first_update)
    with pytest.raises(comfy.model_management.InterruptProcessingException):
        _load_node(pack, path)
    assert values == [1]  # stopped right after the first decoded frame, not after the whole clip
    comfy.model_management.interrupt_current_processing(False)
    comfy.utils.set_progress_bar_global_hook(None)
    assert _load_node(pack, path).args[0].shape == (9, 32, 32, 3)  # and the next run decodes normally


def test_cancel_before_decoding_starts_stops_while_counting(pack, tmp_path, progress_hook):
    import comfy.model_management
    path = make_video(tmp_path / "long.mp4", 250, preset="ultrafast")
    comfy.model_management.interrupt_current_processing(True)
    with pytest.raises(comfy.model_management.InterruptProcessingException):
        _load_node(pack, path)
    assert [u for u in progress_hook if u[2] is None] == []  # no frame was decoded


def comfy_sampler(name):
    import comfy.samplers
    return comfy.samplers.sampler_object(name)
