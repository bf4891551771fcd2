"""Expert weights in fp16, bf16 and fp8 for both variants: files written by the converter's ``--dtype`` and the
loader's ``weight_dtype`` (core UNETLoader's choices) run and agree with the fp32 expert within the dtype's
precision; the CogVideoX patch embedding keeps captions out of fp8.

Error measure: ||out - out_fp32|| / ||out_fp32 - out_without_reference||, i.e. relative to what the expert
contributes (the base is the same fp32 model in every run, so any difference comes from the expert's weights).
Bound: the machine epsilon of the weights' dtype (twice the rounding error of one weight); measured on these
tiny models the errors are 0.3x to 0.9x of it. Each case also checks that the weights really are in that dtype.
"""
import os

import pytest
import torch

import cog_fixtures
import wan_fixtures
from vap_headless.demo.tiny_cog import official_cog_mot_state_dict
from vap_headless.demo.tiny_wan import official_wan_mot_state_dict

EPS = {torch.float16: 2.0 ** -10, torch.bfloat16: 2.0 ** -7, torch.float8_e4m3fn: 2.0 ** -3,
       torch.float8_e5m2: 2.0 ** -2}
FILE_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp8_e4m3fn": torch.float8_e4m3fn}
OPTION_DTYPES = {"fp8_e4m3fn": torch.float8_e4m3fn, "fp8_e4m3fn_fast": torch.float8_e4m3fn,
                 "fp8_e5m2": torch.float8_e5m2}
WAN_CONFIG = {"num_layers": 3, "block_idx_with_mot_ref": [0, 2], "text_dim": 32, "ffn_dim": 64}


def _case(pack, root, variant):
    """Official folder -> fp32 base (core's loader) + one expert file per dtype; inputs; a runner."""
    convert = pack.vap_core.convert.convert
    apply_expert = pack.vap_core.expert.loading.apply_expert
    if variant == "wan":
        sd, cfg = official_wan_mot_state_dict(WAN_CONFIG, seed=3)
    else:
        sd, cfg = official_cog_mot_state_dict(None, seed=3)
    src = wan_fixtures.write_official_folder(os.path.join(root, "official"), sd, cfg)
    files = {"fp32": os.path.join(root, "expert_fp32.safetensors")}
    base_path = os.path.join(root, "base.safetensors")
    convert(src, expert_out=files["fp32"], base_out=base_path, quiet=True)
    for name in FILE_DTYPES:
        files[name] = os.path.join(root, f"expert_{name}.safetensors")
        convert(src, expert_out=files[name], dtype=name, quiet=True)
    if variant == "wan":
        import comfy.sd
        base = comfy.sd.load_diffusion_model(base_path)
        i = wan_fixtures.random_inputs(cfg, seed=4)

        def run(expert, with_ref=True):
            ref = wan_fixtures.ref_kwargs(pack, i["ref_latent"], i["ref_context"], i["ref_clip"]) if with_ref else None
            return wan_fixtures.run_diffusion_model(apply_expert(base, expert), i["x"], i["t"], i["context"],
                                                    i["clip"], ref)
    else:
        base = cog_fixtures.load_base(base_path)
        i = cog_fixtures.random_inputs(cfg, seed=4)

        def run(expert, with_ref=True):
            ref = cog_fixtures.ref_kwargs(pack, i["ref_latent"], i["ref_context"]) if with_ref else None
            return cog_fixtures.run_diffusion_model(apply_expert(base, expert), i["x"], i["t"], i["context"], ref)
    fp32 = pack.vap_core.expert.loading.load_expert(files["fp32"])
    want = run(fp32)
    contribution = (want - run(fp32, with_ref=False)).norm()
    assert contribution > 1e-3 * want.norm()  # the expert does act
    return {"files": files, "run": run, "want": want, "contribution": contribution, "fp32": fp32}


@pytest.fixture(scope="module", params=["wan", "cog"])
def case(request, pack, tmp_path_factory):
    return request.param, _case(pack, str(tmp_path_factory.mktemp(f"dtypes_{request.param}")), request.param)


def _error(case, expert) -> float:
    return ((case["run"](expert) - case["want"]).norm() / case["contribution"]).item()


def _matrices(expert):
    """The expert's linear weights (what the converter's fp8 and the loader's fp8 choices quantize)."""
    return {n: p for n, p in expert.module.named_parameters() if p.ndim == 2 and n.endswith(".weight")}


@pytest.mark.parametrize("file_dtype", sorted(FILE_DTYPES))
def test_converted_expert_file_agrees_with_fp32(pack, case, file_dtype):
    _, c = case
    dtype = FILE_DTYPES[file_dtype]
    expert = pack.vap_core.expert.loading.load_expert(c["files"][file_dtype])
    assert {p.dtype for p in _matrices(expert).values()} == {dtype}
    err = _error(c, expert)
    assert 0 < err < EPS[dtype], f"{file_dtype}: error {err:.3g} of the expert's contribution (bound {EPS[dtype]:.3g})"


@pytest.mark.parametrize("weight_dtype", sorted(OPTION_DTYPES))
def test_weight_dtype_option_agrees_with_fp32(pack, case, weight_dtype):
    """The loader's weight_dtype on the fp32 file: parameters stored in fp8 as core stores a base loaded with
    that choice (patch-embedding convolutions and buffers kept), smaller in ComfyUI's memory accounting."""
    _, c = case
    dtype = OPTION_DTYPES[weight_dtype]
    expert = pack.vap_core.expert.loading.load_expert(c["files"]["fp32"], weight_dtype)
    module = expert.module
    for name, p in module.named_parameters():
        conv = isinstance(module.get_submodule(name.rsplit(".", 1)[0]) if "." in name else module,
                          torch.nn.modules.conv._ConvNd)
        assert p.dtype == (torch.float32 if conv else dtype), name
    assert all(b.dtype == torch.float32 for b in module.buffers())
    assert expert.patcher.model_size() < c["fp32"].patcher.model_size() / 3
    err = _error(c, expert)
    assert 0 < err < EPS[dtype], f"{weight_dtype}: error {err:.3g} of the expert's contribution (bound {EPS[dtype]:.3g})"


def test_weight_dtype_default_keeps_the_file(pack, case):
    _, c = case
    load = pack.vap_core.expert.loading.load_expert
    for name in ("fp32", "bf16", "fp8_e4m3fn"):
        plain, default = load(c["files"][name]), load(c["files"][name], "default")
        a, b = dict(plain.module.named_parameters()), dict(default.module.named_parameters())
        assert all(a[k].dtype == b[k].dtype and torch.equal(a[k].float(), b[k].float()) for k in a)
    assert torch.equal(c["run"](load(c["files"]["fp32"], "default")), c["want"])


def test_fp8_fast_uses_fp8_matmul_where_the_device_has_it(pack, case, monkeypatch):
    """fp8_e4m3fn_fast picks its layers with core's pick_operations: manual_cast where the device has no fp8
    compute (this CPU: same as fp8_e4m3fn), fp8_ops (fp8 matrix multiplication) where it has."""
    import comfy.model_management
    import comfy.ops
    _, c = case
    load = pack.vap_core.expert.loading.load_expert
    linears = lambda e: {type(m) for m in e.module.modules() if isinstance(m, torch.nn.Linear)}  # noqa: E731
    assert linears(load(c["files"]["fp32"], "fp8_e4m3fn_fast")) == {comfy.ops.manual_cast.Linear}
    monkeypatch.setattr(comfy.model_management, "supports_fp8_compute", lambda device=None: True)
    fast = load(c["files"]["fp32"], "fp8_e4m3fn_fast")
    assert linears(fast) == {comfy.ops.fp8_ops.Linear}
    assert linears(load(c["files"]["fp32"], "fp8_e4m3fn")) == {comfy.ops.manual_cast.Linear}
    err = _error(c, fast)  # activations quantized too (torch runs the fp8 matmul on CPU)
    assert 0 < err < EPS[torch.float8_e4m3fn], err


def test_unknown_weight_dtype_is_refused(pack, case):
    _, c = case
    with pytest.raises(pack.vap_core.errors.VAPInputError, match="fp8_e4m3fn_fast"):
        pack.vap_core.expert.loading.load_expert(c["files"]["fp32"], "fp4")


def test_fp8_expert_low_vram_matches_full_load(pack, case):
    import comfy.model_management
    _, c = case
    expert = pack.vap_core.expert.loading.load_expert(c["files"]["fp32"], "fp8_e4m3fn")
    device = comfy.model_management.get_torch_device()
    expert.patcher.load(device, lowvram_model_memory=0, full_load=True)
    full = c["run"](expert)
    expert.patcher.detach()
    expert.patcher.load(device, lowvram_model_memory=1)  # per-layer casting from fp8
    assert expert.patcher.model.model_lowvram
    partial = c["run"](expert)
    expert.patcher.detach()
    assert torch.allclose(full, partial, atol=1e-6)


def test_cog_patch_embedding_keeps_captions_out_of_fp8(pack):
    """With fp8 projection weights the caption states and the video latents reach the projections in their own
    dtype and the weights are cast to it (comfy.ops manual_cast), never the inputs to fp8."""
    import comfy.ops
    embed = pack.vap_core.cogvideox.mot.embed
    g = torch.Generator().manual_seed(0)
    text_proj = comfy.ops.manual_cast.Linear(16, 32, dtype=torch.float8_e4m3fn)
    proj = comfy.ops.manual_cast.Conv2d(4, 32, kernel_size=2, stride=2, dtype=torch.float8_e4m3fn)
    for layer in (text_proj, proj):
        layer.weight = torch.nn.Parameter((0.3 * torch.randn(layer.weight.shape, generator=g)).to(torch.float8_e4m3fn),
                                          requires_grad=False)
        layer.bias = torch.nn.Parameter(torch.zeros(32).to(torch.float8_e4m3fn), requires_grad=False)
    patch_embed = torch.nn.Module()
    patch_embed.text_proj, patch_embed.proj = text_proj, proj
    text = torch.randn(1, 5, 16, generator=g) * 3
    video = torch.randn(1, 2, 4, 4, 4, generator=g) * 3
    seen = []
    for layer in (text_proj, proj):
        layer.register_forward_pre_hook(lambda m, args: seen.append(args[0].dtype))
    with torch.no_grad():
        t, v = embed(patch_embed, text, video, None)
    assert seen == [torch.float32, torch.float32]
    want = torch.nn.functional.linear(text, text_proj.weight.float())
    torch.testing.assert_close(t, want, rtol=1e-6, atol=1e-6)
    quantized = torch.nn.functional.linear(text.to(torch.float8_e4m3fn).float(), text_proj.weight.float())
    assert not torch.allclose(t, quantized, atol=1e-2)  # what casting the captions to fp8 gave
    want_v = torch.nn.functional.conv2d(video.reshape(-1, 4, 4, 4), proj.weight.float(), stride=2)
    torch.testing.assert_close(v, want_v.view(1, 2, 32, -1).transpose(2, 3).flatten(1, 2), rtol=1e-6, atol=1e-6)
