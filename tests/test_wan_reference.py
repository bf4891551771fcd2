"""The pack against the official model on Wan configs the golden set does not cover.

``official_wan_reference`` (plain torch, official tensor names) is first proven equal to the official
code on every golden Wan case; then the pack (converter -> ComfyUI loader -> expert wrapper) is compared
with it on random tiny configs: other layer counts, expert positions, widths, text widths and sizes.
"""
import json
import os

import pytest
import torch
from safetensors.torch import load_file

import host
import official_wan_reference as official
from test_wan_parity import CASES, TOLERANCE
from wan_fixtures import convert_and_load, random_inputs, ref_kwargs, run_diffusion_model, write_official_folder


@pytest.mark.skipif(not CASES, reason=f"no Wan golden cases (VAP_GOLDEN_DIR / ../shared/golden: {host.golden_dir()})")
@pytest.mark.parametrize("case", CASES, ids=os.path.basename)
def test_reference_implementation_matches_golden(case):
    sd = load_file(os.path.join(case, "transformer", "diffusion_pytorch_model.safetensors"))
    cfg = json.load(open(os.path.join(case, "transformer", "config.json")))
    i = load_file(os.path.join(case, "inputs.safetensors"))
    with torch.no_grad():
        out = official.forward(sd, cfg, i["hidden_states"], i["timestep"], i["encoder_hidden_states"],
                               i["encoder_hidden_states_image"], i["hidden_states_mot_ref"],
                               i["encoder_hidden_states_mot_ref"], i["encoder_hidden_states_image_mot_ref"])
    assert (out - load_file(os.path.join(case, "output.safetensors"))["sample"]).abs().max() < 1e-5


CONFIGS = [
    # (config overrides, latent frames, latent h, latent w, seed)
    ({"num_layers": 3, "block_idx_with_mot_ref": [1], "text_dim": 32, "ffn_dim": 64}, 2, 4, 6, 0),
    ({"num_layers": 4, "block_idx_with_mot_ref": [0, 3], "num_attention_heads": 2, "added_kv_proj_dim": 256,
      "text_dim": 48}, 3, 6, 4, 1),
    ({"num_layers": 2, "block_idx_with_mot_ref": [0, 1], "text_dim": 16, "ffn_dim": 96}, 1, 2, 2, 2),
]


@pytest.mark.parametrize("overrides,frames,height,width,seed", CONFIGS)
def test_pack_matches_official_on_other_configs(pack, tmp_path, overrides, frames, height, width, seed):
    from vap_headless.demo.tiny_wan import official_wan_mot_state_dict
    sd, cfg = official_wan_mot_state_dict(overrides, seed=seed)
    write_official_folder(str(tmp_path / "vap"), sd, cfg, shards=2)
    base, expert, _ = convert_and_load(pack, str(tmp_path / "vap"), str(tmp_path))
    patched = pack.vap_core.expert.loading.apply_expert(base, expert)
    i = random_inputs(cfg, frames, height, width, seed=seed)
    got_blocks, want_blocks = {}, {}
    got = run_diffusion_model(patched, i["x"], i["t"], i["context"], i["clip"],
                              ref_kwargs(pack, i["ref_latent"], i["ref_context"], i["ref_clip"]),
                              callback=lambda k, x, r: got_blocks.__setitem__(k, (x.clone(), r.clone())))
    with torch.no_grad():
        want = official.forward(sd, cfg, i["x"], i["t"], i["context"], i["clip"], i["ref_latent"], i["ref_context"],
                                i["ref_clip"], block_callback=lambda k, x, r: want_blocks.__setitem__(k, (x, r)))
    assert (got - want).abs().max().item() < TOLERANCE
    fast = run_diffusion_model(patched, i["x"], i["t"], i["context"], i["clip"],
                               ref_kwargs(pack, i["ref_latent"], i["ref_context"], i["ref_clip"]))
    assert (fast - want).abs().max().item() < TOLERANCE  # the path that skips unread reference work
    for k in want_blocks:
        for a, b in zip(got_blocks[k], want_blocks[k]):
            assert (a - b).abs().max().item() < TOLERANCE, f"block {k}"
