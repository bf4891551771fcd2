"""The official pipelines' final latents from a REAL ComfyUI server running the SHIPPED official API workflows.

For every case folder of VAP_PIPELINE_GOLDEN_DIR (tests/pipeline_golden.py; nothing about a case is written here),
the shipped workflow of its variant (workflows/api/wan_vap_official.api.json, cog_vap_official.api.json) is
submitted to a `python main.py --cpu` server with the case's files, the case's call settings (size, frame count,
frame selection, steps, guidance, seed) and the workflow's own noise (KSampler's seed for Wan = the official draw;
'VAP Official Noise' + the conditioning's seed for CogVideoX). A core *Save Latent* is added after the sampler and
its .latent file (read back over HTTP) is compared with the case's final latents (``decode_input``).

Changes to the shipped graph, and only these:
* file names and the settings above on the nodes that hold them;
* every *CLIP Text Encode* -> ``VAPTestLoadConditioning`` and (Wan) every *CLIP Vision Encode* ->
  ``VAPTestLoadCLIPVisionOutput`` (tests/server_golden_nodes): the cases' encoders are stubs, so their states
  come from the case's embeddings (as the in-process tests feed them); *Load CLIP* / *Load CLIP Vision*, left
  without users, are removed;
* CogVideoX: *Load Diffusion Model* -> ``VAPTestTinyCogUNETLoader`` (same inputs): core's loader cannot size a
  tiny base's learned positional table nor give a 2-head model the 5B's latent format (README item 8 of the cases);
  Wan's base goes through core *Load Diffusion Model* unchanged;
* more references (CogVideoX): one more 'Load VAP Reference Video', 'VAP CogVideoX Encode Reference' and caption
  per reference, on the conditioning node's reference_N / ref_positive_N inputs;
* + *Save Latent* on the sampler's output.
Base and expert come from the case's official transformer folder through the pack's converter; VAEs through core
*Load VAE* (the CogVideoX one regenerated from the case's recipe).

Tolerances are the in-process tests' for the same stage (tests/test_pipeline_golden_*.py, reasons there): the
server runs the same code on the same CPU, so it must land as close as the in-process graph does.
"""
from __future__ import annotations

import copy
import os
import shutil

import pytest
import torch

import host
import pipeline_golden as pg
import test_pipeline_golden_cog as golden_cog
import test_pipeline_golden_wan as golden_wan

pytestmark = [pytest.mark.server, pytest.mark.host]

NODES_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "server_golden_nodes")
CASES = pg.cases("cog") + pg.cases("wan")
SAVE_LATENT = "vap_golden_save_latent"   # id of the added Save Latent node


def _variant(case) -> str:
    return "cog" if case in pg.cases("cog") else "wan"


def _tolerance(variant: str) -> float:
    """The in-process tests' tolerance on 'final latents (SaveLatent / VAE Decode input)'."""
    if variant == "cog":
        import comfy.latent_formats
        return golden_cog.FINAL_LATENT / comfy.latent_formats.CogVideoX1_5().scale_factor
    return golden_wan.FINAL_LATENT * 2


# ------------------------------------------------------------------------------------ the case's files

def _texts(case) -> dict[str, torch.Tensor]:
    """The case's text states per conditioning input, split as CLIP Text Encode would give them (one caption per
    reference; the reference negative is one caption's block, repeated by the pack per reference)."""
    emb = pg.load(case, "embeddings")
    n_refs = len(_videos(case))
    tokens = emb["prompt_embeds"].shape[1]
    ref_negative = emb["negative_prompt_embeds_mot_ref"][:, :tokens]
    assert torch.equal(emb["negative_prompt_embeds_mot_ref"], ref_negative.repeat(1, n_refs, 1))
    out = {"positive": emb["prompt_embeds"], "negative": emb["negative_prompt_embeds"], "ref_negative": ref_negative}
    for i in range(n_refs):
        out["ref_positive" if i == 0 else f"ref_positive_{i + 1}"] = emb["prompt_embeds_mot_ref"][:, i * tokens:(i + 1) * tokens]
    if _variant(case) == "wan":
        out["clip_vision_start_image"], out["clip_vision_reference"] = emb["image_embeds"], emb["image_embeds_mot_ref"]
    return out


def _videos(case) -> list[str]:
    media = pg.call_json(case)["media"]
    return media.get("video_files") or [media["video_file"]]


def _prepare(pack, case, base: str) -> dict:
    """Write the case's models and inputs into the server's base directory; returns the file names."""
    from safetensors.torch import save_file
    cid = pg.case_id(case)
    models, inputs = os.path.join(base, "models"), os.path.join(base, "input")
    for folder in ("diffusion_models", "vap", "vae"):
        os.makedirs(os.path.join(models, folder), exist_ok=True)
    os.makedirs(inputs, exist_ok=True)
    names = {"unet": f"{cid}_base.safetensors", "expert": f"{cid}_expert.safetensors", "vae": f"{cid}_vae.safetensors",
             "image": f"{cid}_target_image.png", "videos": [f"{cid}_{v}" for v in _videos(case)], "texts": {}}
    pack.vap_core.convert.convert(os.path.join(case, "transformer"),
                                  expert_out=os.path.join(models, "vap", names["expert"]),
                                  base_out=os.path.join(models, "diffusion_models", names["unet"]), quiet=True)
    vae = pg.cog_vae_file(case) if _variant(case) == "cog" else os.path.join(case, "vae_native.safetensors")
    os.symlink(vae, os.path.join(models, "vae", names["vae"]))
    shutil.copyfile(os.path.join(case, "target_image.png"), os.path.join(inputs, names["image"]))
    for video, name in zip(_videos(case), names["videos"]):
        shutil.copyfile(os.path.join(case, video), os.path.join(inputs, name))
    for key, states in _texts(case).items():
        names["texts"][key] = f"{cid}_{key}.safetensors"
        save_file({"states": states.contiguous()}, os.path.join(inputs, names["texts"][key]))
    return names


# ------------------------------------------------------------------------------------ the graph

def _one(prompt: dict, class_type: str) -> str:
    ids = [k for k, v in prompt.items() if v["class_type"] == class_type]
    assert len(ids) == 1, f"the shipped workflow has {len(ids)} {class_type} nodes"
    return ids[0]


def golden_prompt(case, names: dict) -> dict:
    """The shipped workflow of the case's variant with the changes listed in the module docstring."""
    variant, cid = _variant(case), pg.case_id(case)
    call = pg.call_json(case)["pipeline_call"]
    prompt = copy.deepcopy(pg.shipped_workflow(golden_cog.SHIPPED if variant == "cog" else golden_wan.SHIPPED))
    # the shipped graphs: Encode Reference -> Conditioning from Reference (size and length from the reference loader)
    cond = _one(prompt, "VAPCogConditioningFromReference" if variant == "cog" else "VAPWanConditioningFromReference")
    c_in = prompt[cond]["inputs"]
    encode = c_in["reference"][0]
    width, height, length = call["width"], call["height"], call["num_frames"]
    assert c_in.get("extra_frames", 0) == 0  # the video is as long as the reference, as in the official call

    # more references: copies of the shipped reference loader, its encode node and the caption encoder
    ref_loader, caption = prompt[encode]["inputs"]["reference_frames"][0], c_in["ref_positive"][0]
    for i in range(2, len(names["videos"]) + 1):
        prompt[f"{ref_loader}_{i}"] = copy.deepcopy(prompt[ref_loader])
        prompt[f"{encode}_{i}"] = copy.deepcopy(prompt[encode])
        prompt[f"{encode}_{i}"]["inputs"]["reference_frames"] = [f"{ref_loader}_{i}", 0]
        prompt[f"{caption}_{i}"] = copy.deepcopy(prompt[caption])
        c_in[f"reference_{i}"], c_in[f"ref_positive_{i}"] = [f"{encode}_{i}", 0], [f"{caption}_{i}", 0]

    # encoders -> the case's states (the reference's CLIP vision feeds the Wan encode node)
    stand_in = {"CLIPTextEncode": "VAPTestLoadConditioning", "CLIPVisionEncode": "VAPTestLoadCLIPVisionOutput"}
    for key, file in names["texts"].items():
        src = (c_in if key in c_in else prompt[encode]["inputs"])[key][0]
        assert prompt[src]["class_type"] in stand_in, f"{key} of the conditioning is fed by {prompt[src]['class_type']}"
        prompt[src] = {"class_type": stand_in[prompt[src]["class_type"]], "inputs": {"file": file, "key": "states"},
                       "_meta": {"title": f"{prompt[src]['_meta']['title']} (case states)"}}
    for loader in [k for k, v in prompt.items() if v["class_type"] in ("CLIPLoader", "CLIPVisionLoader")]:
        del prompt[loader]
    for node in prompt.values():
        for value in node["inputs"].values():
            assert not (isinstance(value, list) and value and value[0] not in prompt), f"dangling link {value}"

    # files and the case's call settings
    unet = _one(prompt, "UNETLoader")
    prompt[unet]["inputs"]["unet_name"] = names["unet"]
    if variant == "cog":
        prompt[unet]["class_type"] = "VAPTestTinyCogUNETLoader"
    prompt[_one(prompt, "VAPExpertLoader")]["inputs"]["expert_name"] = names["expert"]
    prompt[_one(prompt, "VAELoader")]["inputs"]["vae_name"] = names["vae"]
    prompt[_one(prompt, "LoadImage")]["inputs"]["image"] = names["image"]
    encodes = [encode] + [c_in[f"reference_{i}"][0] for i in range(2, len(names["videos"]) + 1)]
    loaders = [prompt[e]["inputs"]["reference_frames"][0] for e in encodes]
    for loader, video in zip(loaders, names["videos"]):
        prompt[loader]["inputs"].update(file=video, frame_selection=call["frames_selection"], num_frames=length,
                                        width=width, height=height)
    if variant == "cog":
        noise = _one(prompt, "VAPOfficialNoise")
        assert prompt[noise]["inputs"]["noise_seed"] == c_in["seed"], "shipped: one seed for noise and VAE samples"
        prompt[noise]["inputs"]["noise_seed"] = c_in["seed"] = call["seed"]
        prompt[_one(prompt, "BasicScheduler")]["inputs"]["steps"] = call["num_inference_steps"]
        prompt[_one(prompt, "VAPDynamicCFGGuider")]["inputs"].update(cfg=call["guidance_scale"],
                                                                    dynamic=call["use_dynamic_cfg"])
        sampler = _one(prompt, "SamplerCustomAdvanced")
    else:
        sampler = _one(prompt, "KSampler")
        prompt[sampler]["inputs"].update(seed=call["seed"], steps=call["num_inference_steps"], cfg=call["guidance_scale"])
    prompt[SAVE_LATENT] = {"class_type": "SaveLatent",
                           "inputs": {"samples": [sampler, 0], "filename_prefix": f"golden/{cid}"},
                           "_meta": {"title": "Save Latent (final latents)"}}
    return prompt


# ------------------------------------------------------------------------------------ server

@pytest.fixture(scope="module")
def golden_server(pack, tmp_path_factory):
    """One server for every case: the pack + tests/server_golden_nodes, every case's files in its base directory."""
    if not CASES:
        pytest.skip(pg.skip_reason(None))
    from vap_headless import client as ch
    base = str(tmp_path_factory.mktemp("golden_server_base"))
    names = {case: _prepare(pack, case, base) for case in CASES}
    srv = ch.ComfyServer(host.COMFYUI_PATH, custom_node_dirs=[(host.PACK_DIR, "ComfyUI-VAP"), NODES_DIR],
                         base_directory=base, cpu=True)
    srv.start()
    client = None
    try:
        client = ch.ComfyClient(srv.address)
        yield {"server": srv, "client": client, "ch": ch, "names": names, "runs": {}, "dir": base}
    finally:
        if client is not None:
            client.close()
        srv.cleanup()


def _run(golden_server, case, tmp_path_factory) -> pg.Report:
    """Run the case's graph once; the report compares the saved latents with the case's final latents."""
    from safetensors.torch import load_file
    runs = golden_server["runs"]
    if case not in runs:
        srv, client = golden_server["server"], golden_server["client"]
        prompt = golden_prompt(case, golden_server["names"][case])
        result = client.run(prompt, timeout=1800)
        assert result.status == "success", (f"{pg.case_id(case)}: {golden_server['ch'].describe_execution_error(result.error)}"
                                            f"\n{srv.log_tail()}")
        saved = result.outputs[SAVE_LATENT]["latents"]
        assert len(saved) == 1, saved
        path = client.download(saved[0], str(tmp_path_factory.mktemp(pg.case_id(case)) / saved[0]["filename"]))
        latents = load_file(path)["latent_tensor"]
        report = pg.Report()
        variant = _variant(case)
        report.add("final latents (server SaveLatent)", latents, pg.load(case, "output_latents")["decode_input"],
                   _tolerance(variant), f"the in-process {variant} test's tolerance on the same stage")
        runs[case] = report
    return runs[case]


@pytest.mark.parametrize("case", CASES or [None], ids=pg.case_id)
def test_shipped_workflow_in_a_server_gives_the_official_final_latents(golden_server, case, tmp_path_factory):
    if case is None:
        pytest.skip(pg.skip_reason(case))
    report = _run(golden_server, case, tmp_path_factory)
    print(f"\n{pg.case_id(case)} (server):\n{report.summary()}")
    report.check()


@pytest.mark.parametrize("case", CASES or [None], ids=pg.case_id)
def test_a_perturbed_case_is_rejected(golden_server, case, tmp_path_factory):
    """The comparison can fail: the same server run checked against the case's latents moved slightly."""
    if case is None:
        pytest.skip(pg.skip_reason(case))
    report = _run(golden_server, case, tmp_path_factory)
    with pytest.raises(AssertionError, match="final latents"):
        report.perturbed("final latents").check()
