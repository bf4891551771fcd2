"""The official Wan2.1-I2V VAP pipeline end to end, stage by stage, against the pack's graph as a user builds it:
ComfyUI's own VAE loading (the case's native-layout VAE), base + expert from the case's official transformer folder
through the pack's converter and loaders, Load Image, 'Load VAP Reference Video' on the
mp4, 'VAP Wan Encode Reference' + 'VAP Wan Conditioning from Reference' with the case's embeddings as text and
CLIP-vision conditioning (the deprecated one-node 'VAP Wan Conditioning' checked to give the same tensors), then
ModelSamplingSD3 +
KSampler with the settings of the shipped wan_vap_official workflow (the case's step count, guidance and seed) and
VAE Decode. 'VAP Official Noise' (wan2.1) is checked to be KSampler's own noise.

Each case folder of VAP_PIPELINE_GOLDEN_DIR whose call.json names the Wan pipeline is one test; nothing about a case
is written here. Tolerances (float32 on CPU) are below, each with its reason.
"""
import os

import pytest

import pipeline_golden as pg

PIXELS = 1e-6          # Lanczos on uint8/255 = PIL LANCZOS stretch bit for bit
TEXT = 0.0             # embeddings handed on untouched (already 512 tokens)
VAE_LATENT = 2e-5      # ComfyUI's WanVAE vs diffusers' on the same weights: 3e-6 on the posterior mode; the
                       # Wan21 normalisation divides where the official multiplies by 1/std (ulps)
SIGMAS = 0.0           # 'normal' with ModelSamplingSD3(shift 1) gives the official linspace(1, 0.001) bit for bit
STEP_LATENT = 1e-4     # transformer float32 error (~1e-5) amplified by CFG 5 per step; ComfyUI's CFG and Euler in
                       # x0 space vs the official velocity space (ulps)
FINAL_LATENT = 5e-4    # README's suggestion (N(0,1e-5) on every transformer output moved them 1.3e-4)
FRAMES = 1e-3          # decode of latents that agree to ~1e-4 (decoder 1e-6 on identical latents)

SHIPPED = "wan_vap_official"


def _clip_vision(states):
    import comfy.clip_vision
    out = comfy.clip_vision.Output()
    out.penultimate_hidden_states = states
    return out


def run_case(pack, case, tmp_path):
    import comfy.sample
    import comfy.samplers
    import comfy.sd
    import comfy.utils
    import nodes as core_nodes
    from comfy_extras.nodes_model_advanced import ModelSamplingSD3
    from wan_fixtures import convert_and_load

    call = pg.call_json(case)["pipeline_call"]
    emb, cond, steps = pg.load(case, "embeddings"), pg.load(case, "conditioning"), pg.load(case, "steps")
    out_latents, out_frames = pg.load(case, "output_latents"), pg.load(case, "output_frames")
    inputs = pg.load(case, "transformer_inputs")
    workflow = pg.shipped_workflow(SHIPPED)
    w_sampler, w_shift = pg.node_inputs(workflow, "KSampler"), pg.node_inputs(workflow, "ModelSamplingSD3")
    w_ref = pg.node_inputs(workflow, "VAPLoadReferenceVideo")
    w_cond = pg.conditioning_inputs(workflow, "VAPWanConditioning", "VAPWanConditioningFromReference")
    width, height, length, seed = call["width"], call["height"], call["num_frames"], call["seed"]
    media = pg.call_json(case)["media"]
    videos = media.get("video_files") or [media["video_file"]]
    assert len(videos) == 1, "Wan VAP takes one reference"
    report = pg.Report()
    n = pack.nodes

    vae = comfy.sd.VAE(sd=comfy.utils.load_torch_file(os.path.join(case, "vae_native.safetensors")))
    base, expert, _ = convert_and_load(pack, os.path.join(case, "transformer"), str(tmp_path))
    model = n.expert_nodes.VAPApplyExpert.execute(base, expert, 0.0, 1.0).args[0]
    model = ModelSamplingSD3().patch(model, w_shift["shift"])[0]
    recorder = pg.StepRecorder()
    model = recorder.attach(model)

    image = pg.load_image(os.path.join(case, "target_image.png"))
    # the node stretches the start image to the reference's size (Lanczos); the one-node graphs did it with core
    # 'Upscale Image' (lanczos, crop disabled) in front
    scaled = core_nodes.ImageScale().upscale(image, "lanczos", width, height, "disabled")[0]
    frames, _, first_frame = n.reference_nodes.VAPLoadReferenceVideo.execute(
        file=os.path.join(case, videos[0]), frame_selection=call["frames_selection"], num_frames=length, width=width,
        height=height, resize_mode=w_ref["resize_mode"], seed=w_ref["seed"]).args
    fitted = pack.vap_core.wan.conditioning.fit_start_images(image, width, height)
    report.add("start image pixels", fitted[0] * 2 - 1, cond["image_pixels"][0].movedim(0, -1), PIXELS, "Lanczos")
    report.add("reference pixels", frames * 2 - 1, cond["ref_video_pixels"][0].movedim(0, -1), PIXELS,
               "frame selection + Lanczos (PyAV rgb24)")

    # the graph as built now: 'VAP Wan Encode Reference', then 'VAP Wan Conditioning from Reference' (the size from
    # the reference, as long as it: extra_frames 0)
    common = dict(positive=pg.conditioning(emb["prompt_embeds"]), negative=pg.conditioning(emb["negative_prompt_embeds"]),
                  ref_positive=pg.conditioning(emb["prompt_embeds_mot_ref"]), vae=vae,
                  batch_size=w_cond["batch_size"], start_image=image,
                  clip_vision_start_image=_clip_vision(emb["image_embeds"]),
                  ref_negative=pg.conditioning(emb["negative_prompt_embeds_mot_ref"]))
    clip_vision_reference = _clip_vision(emb["image_embeds_mot_ref"])
    reference = n.reference_encode_nodes.VAPWanEncodeReference.execute(vae, frames, clip_vision_reference).args[0]
    positive, negative, latent = n.wan_reference_conditioning.VAPWanConditioningFromReference.execute(
        **common, reference=reference, extra_frames=0).args
    # the deprecated one-node conditioning (saved workflows) builds the same numbers
    old = n.wan_conditioning.VAPWanConditioning.execute(
        **{**common, "start_image": scaled}, width=width, height=height, length=length, reference_frames=frames,
        clip_vision_reference=clip_vision_reference).args
    pg.report_same_conditioning(report, old, (positive, negative, latent))

    conds = pack.vap_core.conds
    d_pos, d_neg = positive[0][1], negative[0][1]
    fmt = base.model.latent_format
    report.add("image condition (normalised)", fmt.process_in(d_pos["concat_latent_image"]), cond["condition"][:, 4:],
               VAE_LATENT, "VAE mode of [image, grey...], Wan21 normalisation")
    report.add("reference input (latents, mask, condition)", d_pos["model_conds"][conds.REF_LATENT].cond,
               inputs["hidden_states_mot_ref"], VAE_LATENT, "VAE mode of the clip and of [frame 0, grey...]")
    report.add("prompt", positive[0][0], emb["prompt_embeds"], TEXT, "handed on")
    report.add("negative prompt", negative[0][0], emb["negative_prompt_embeds"], TEXT, "handed on")
    report.add("reference caption", d_pos["model_conds"][conds.REF_CONTEXT].cond, emb["prompt_embeds_mot_ref"], TEXT,
               "handed on")
    report.add("reference negative caption", d_neg["model_conds"][conds.REF_CONTEXT].cond,
               emb["negative_prompt_embeds_mot_ref"], TEXT, "handed on")
    report.add("reference CLIP vision", d_pos["model_conds"][conds.REF_CLIP].cond, emb["image_embeds_mot_ref"], TEXT,
               "first selected frame's states")

    noise = n.noise_nodes.VAPOfficialNoise.execute(seed, "wan2.1").args[0].generate_noise(latent)
    report.add("noise (VAP Official Noise)", noise, pg.load(case, "noise")["noise"], 0, "randn of the seeded generator")
    report.add("noise (KSampler's own)", comfy.sample.prepare_noise(latent["samples"], seed),
               pg.load(case, "noise")["noise"], 0, "core prepare_noise = the official draw")
    sampling = model.get_model_object("model_sampling")
    sigmas = comfy.samplers.calculate_sigmas(sampling, w_sampler["scheduler"], call["num_inference_steps"])
    report.add("sigmas", sigmas, steps["sigmas"], SIGMAS, "'normal' + shift 1 = official linspace")
    report.add("timesteps", sampling.timestep(sigmas[:-1]), steps["timesteps"], SIGMAS, "1000 sigma")
    sampled = core_nodes.KSampler().sample(model, seed, call["num_inference_steps"], call["guidance_scale"],
                                           w_sampler["sampler_name"], w_sampler["scheduler"], positive, negative,
                                           latent, denoise=w_sampler["denoise"])[0]
    for i, x in enumerate(recorder.after_each_step()):
        report.add(f"latents after step {i}", x, steps["latents"][i], STEP_LATENT, "Euler step")
    report.add("final latents", recorder.final, out_latents["latents"], FINAL_LATENT, "normalised")
    report.add("final latents (SaveLatent / VAE Decode input)", sampled["samples"], out_latents["decode_input"],
               FINAL_LATENT * 2, "x std + mean (std up to ~2)")
    decoded = vae.decode(sampled["samples"])
    report.add("frames (VAE Decode)", decoded.reshape(-1, *decoded.shape[-3:]), out_frames["frames"], FRAMES,
               "core decode = official decode")
    return report


@pytest.mark.parametrize("case", pg.case_params("wan"), ids=pg.case_id)
def test_pack_graph_matches_the_official_pipeline(pack, case, tmp_path_factory):
    if case is None:
        pytest.skip(pg.skip_reason(case))
    report = pg.run_once(run_case, pack, case, tmp_path_factory)
    print(f"\n{pg.case_id(case)}:\n{report.summary()}")
    report.check()


@pytest.mark.parametrize("case", pg.case_params("wan"), ids=pg.case_id)
def test_a_perturbed_case_is_rejected(pack, case, tmp_path_factory):
    """The comparison can fail: the same run checked against copies of the official stages moved slightly."""
    if case is None:
        pytest.skip(pg.skip_reason(case))
    report = pg.run_once(run_case, pack, case, tmp_path_factory)
    pg.assert_perturbations_rejected(report, ("final latents", "latents after step 0", "reference input", "noise",
                                              "frames", "one-node conditioning"))
