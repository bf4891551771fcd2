"""The official random streams, replayed host-free (vap_core.official_noise, vap_core.cogvideox.official_rng)
against the official order written out here, and against the golden pipeline cases when present."""
import json
import os

import pytest
import torch

import host
from vap_core.cogvideox.official_rng import cog_draws, cog_noise
from vap_core.errors import VAPInputError
from vap_core.official_noise import wan_noise


def test_wan_noise_is_the_generators_only_draw():
    shape = (2, 16, 3, 4, 6)
    expected = torch.randn(shape, generator=torch.Generator("cpu").manual_seed(77))
    assert torch.equal(wan_noise(77, shape), expected)


@pytest.mark.parametrize("refs", [[], [3], [3, 3], [3, 2, 4]])
def test_cog_stream_order(refs):
    """image eps [1,16,1,h,w] -> noise [B,F,16,h,w] (returned channels-first) -> every clip -> every first frame."""
    shape = (2, 16, 3, 4, 6)
    g = torch.Generator("cpu").manual_seed(5)
    image = torch.randn(1, 16, 1, 4, 6, generator=g)
    noise = torch.randn(2, 3, 16, 4, 6, generator=g)
    clips = [torch.randn(1, 16, f, 4, 6, generator=g) for f in refs]
    firsts = [torch.randn(1, 16, 1, 4, 6, generator=g) for _ in refs]
    d = cog_draws(5, shape, refs)
    assert torch.equal(d.image_eps, image)
    assert torch.equal(d.noise, noise.permute(0, 2, 1, 3, 4)) and d.noise.shape == shape
    assert len(d.clip_eps) == len(refs) and all(torch.equal(a, b) for a, b in zip(d.clip_eps, clips))
    assert len(d.first_eps) == len(refs) and all(torch.equal(a, b) for a, b in zip(d.first_eps, firsts))
    assert torch.equal(cog_noise(5, shape), d.noise)


def test_each_part_is_replayed_independently():
    """Replays with and without references agree on the shared prefix (a node drawing only the noise and a node
    drawing the references see the same stream)."""
    shape = (1, 16, 13, 6, 9)
    full = cog_draws(31337, shape, [13])
    assert torch.equal(cog_noise(31337, shape), full.noise)
    assert not torch.equal(full.noise, wan_noise(31337, shape))


def test_cuda_without_a_gpu_names_the_fix():
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: the GPU stream is drawn there")
    with pytest.raises(VAPInputError, match="NVIDIA GPU.*device 'cpu'"):
        cog_noise(1, (1, 16, 2, 2, 2), device="cuda")


def _pipeline_cases():
    root = os.environ.get("VAP_PIPELINE_GOLDEN_DIR") or os.path.join(host.PACK_DIR, "..", "shared", "golden_pipeline")
    if not os.path.isdir(root):
        return []
    return sorted(os.path.join(root, d) for d in os.listdir(root) if os.path.isfile(os.path.join(root, d, "call.json")))


@pytest.mark.parametrize("case", _pipeline_cases() or [None], ids=lambda c: os.path.basename(c) if c else "none")
def test_golden_streams_bit_for_bit(case):
    if case is None:
        pytest.skip("no golden pipeline cases: set VAP_PIPELINE_GOLDEN_DIR (see README)")
    from safetensors.torch import load_file
    call = json.load(open(os.path.join(case, "call.json")))
    seed = call["pipeline_call"]["seed"]
    noise = load_file(os.path.join(case, "noise.safetensors"))["noise"]
    if "Cog" in call["official"]["pipeline"]:
        cond = load_file(os.path.join(case, "conditioning.safetensors"))
        n = len([k for k in cond if k.startswith("vae_eps.ref_video.")])
        clips = [cond[f"vae_eps.ref_video.{i}"] for i in range(n)]
        d = cog_draws(seed, noise.permute(0, 2, 1, 3, 4).shape, [c.shape[2] for c in clips])
        assert torch.equal(d.noise, noise.permute(0, 2, 1, 3, 4))
        assert torch.equal(d.image_eps, cond["vae_eps.image"])
        for i in range(n):
            assert torch.equal(d.clip_eps[i], clips[i]) and torch.equal(d.first_eps[i], cond[f"vae_eps.ref_image.{i}"])
    else:
        assert torch.equal(wan_noise(seed, noise.shape), noise)
