"""'VAP Official Noise' against the real host: Wan equals core's prepare_noise; CogVideoX is the noise part of the
official one-generator stream (after the start image's VAE-sample eps); errors name the fix."""
import pytest
import torch


def _noise(pack, seed, variant, **kw):
    return pack.nodes.noise_nodes.VAPOfficialNoise.execute(seed, variant, **kw).args[0]


def test_registered_in_core_noise_category(pack):
    node = pack.nodes.noise_nodes.VAPOfficialNoise
    assert node in pack.nodes.NODE_LIST
    schema = node.define_schema()
    assert schema.node_id == "VAPOfficialNoise" and schema.category == "model/sampling/noise"


def test_wan_noise_is_cores_prepare_noise(pack):
    import comfy.sample
    latent = {"samples": torch.zeros(2, 16, 3, 8, 12)}
    noise = _noise(pack, 20251202, "wan2.1")
    assert noise.seed == 20251202
    assert torch.equal(noise.generate_noise(latent), comfy.sample.prepare_noise(latent["samples"], 20251202))


def test_cog_noise_follows_the_image_eps(pack):
    """The official CogVideoX stream: eps [1,16,1,h,w] first, then the noise [B,F,16,h,w] (ComfyUI gets it
    channels-first). Not core's RandomNoise."""
    import comfy.sample
    latent = {"samples": torch.zeros(1, 16, 3, 6, 8)}
    g = torch.Generator().manual_seed(9)
    torch.randn(1, 16, 1, 6, 8, generator=g)
    expected = torch.randn(1, 3, 16, 6, 8, generator=g).permute(0, 2, 1, 3, 4)
    got = _noise(pack, 9, "cogvideox").generate_noise(latent)
    assert torch.equal(got, expected)
    assert not torch.equal(got, comfy.sample.prepare_noise(latent["samples"], 9))


def test_noise_keeps_the_latent_dtype(pack):
    latent = {"samples": torch.zeros(1, 16, 2, 4, 4, dtype=torch.float16)}
    assert _noise(pack, 1, "cogvideox").generate_noise(latent).dtype == torch.float16


def test_bfloat16_rounds_the_draw(pack):
    """dtype bfloat16 draws as a bf16 pipeline does; the numbers come back as float32 on the bf16 grid."""
    latent = {"samples": torch.zeros(1, 16, 2, 4, 4)}
    noise = _noise(pack, 3, "wan2.1", dtype="bfloat16").generate_noise(latent)
    assert noise.dtype == torch.float32 and torch.equal(noise, noise.bfloat16().float())
    assert torch.equal(noise, torch.randn(1, 16, 2, 4, 4, generator=torch.Generator().manual_seed(3),
                                          dtype=torch.bfloat16).float())


@pytest.mark.parametrize("latent, words", [
    ({"samples": torch.zeros(1, 4, 8, 8)}, ["video noise", "VAP conditioning"]),
    ({"samples": torch.zeros(2, 16, 2, 4, 4), "batch_index": [0, 1]}, ["batch_index", "RandomNoise"]),
])
def test_errors_name_the_fix(pack, latent, words):
    from comfyui_vap.vap_core.errors import VAPInputError
    with pytest.raises(VAPInputError) as info:
        _noise(pack, 1, "cogvideox").generate_noise(latent)
    for word in words:
        assert word in str(info.value)


def test_cuda_without_a_gpu_is_refused_when_the_node_runs(pack):
    from comfyui_vap.vap_core.errors import VAPInputError
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    with pytest.raises(VAPInputError, match="NVIDIA GPU"):
        _noise(pack, 1, "cogvideox", device="cuda")
