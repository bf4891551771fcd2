"""Whole Wan VAP videos (sampling runs) with and without ComfyUI's step caches, next to the official code.

    nice python bench/bench_caches.py [--config mid] [--steps 12] [--easycache-thresholds 0.5,1.0]

Runs, in ONE process, on IDENTICAL random weights and inputs (float32, CPU), each a full sampling run of
``--steps`` steps with CFG (cond + uncond every step, guidance ``--cfg``):
  pack exact           the converted base (ComfyUI's loader) + the pack's expert (``apply_expert``), sampled by
                       ``comfy.sample.sample`` (euler, ``normal`` scheduler, ``ModelSamplingSD3`` shift 1: the
                       official pipeline's ``FlowMatchEulerDiscreteScheduler`` sigmas, bit for bit)
  pack + EasyCache t   the same model with core's EasyCache node (reuse_threshold t) applied after Apply VAP Expert
  pack + LazyCache t   the same with core's LazyCache node
  official             ``WanTransformer3DMOTModel`` of the official fork in a denoising loop like its pipeline's:
                       the official ``FlowMatchEulerDiscreteScheduler``, cond then uncond as two batch-1 calls,
                       ``u + g (c - u)``, ``scheduler.step``; the same noise, image condition (built by ComfyUI's own
                       ``WAN21.concat_cond`` from the same inputs), captions, CLIP states and reference
The runs are interleaved (with ``--repeats`` > 1 the order is rotated per repeat). Reported: wall / CPU time of
each whole run (ratios to pack exact and to official), full model calls and the steps each cache skipped (a step
is "skipped" when it made no full MoT call), and the final latents' max / mean abs difference to pack exact (and
pack exact to official), in the model's latent space.

Random weights: the differences show what the caches do to THIS model; how much a cache changes the output of
the released weights (which change far less from step to step than a random network) is not predicted by it.
Model sizes (``tiny``, ``mid``) are bench_wan.py's ``CONFIGS``. Writes ``bench/results/caches.md`` and
``caches.json``. Not a test: nothing here asserts; timings depend on the machine and its load.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_wan  # noqa: E402  (model sizes, checkpoint preparation, host set-up, official import)
import common  # noqa: E402
from common import RESULTS_DIR, fmt_s  # noqa: E402

EXACT, OFFICIAL = "pack exact", "official"


# ----------------------------------------------------------------------------------------------- inputs
def make_inputs(cfg: dict, latent: tuple, seed: int = 1) -> dict:
    """What a Wan VAP I2V graph feeds the sampler, random: captions (cond, uncond) for the target and the
    reference branch, CLIP states, the start-image latent (VAE space, as WanImageToVideo stores it) with its
    mask (0 on the start frame, WanImageToVideo's convention), and the reference's 36-channel hidden states
    (the pack's REF_LATENT = the official ``hidden_states_mot_ref``)."""
    import torch
    g = torch.Generator().manual_seed(seed)
    f, h, w = latent
    mask = torch.ones(1, 1, f, h, w)
    mask[:, :, :1] = 0.0
    return {
        "image_latent": torch.randn(1, 16, f, h, w, generator=g), "concat_mask": mask,
        "ref_latent": torch.randn(1, cfg["in_channels"], f, h, w, generator=g),
        "context": torch.randn(2, bench_wan.TEXT_TOKENS, cfg["text_dim"], generator=g),      # [cond, uncond]
        "ref_context": torch.randn(2, bench_wan.TEXT_TOKENS, cfg["text_dim"], generator=g),  # [cond, uncond]
        "clip": torch.randn(1, bench_wan.IMAGE_TOKENS, cfg["image_dim"], generator=g),
        "ref_clip": torch.randn(1, bench_wan.IMAGE_TOKENS, cfg["image_dim"], generator=g),
    }


def comfy_conds(pack, inputs):
    """(positive, negative) as CLIPTextEncode + WanImageToVideo + the pack's reference node leave them."""
    import comfy.clip_vision
    import comfy.conds
    conds = pack.vap_core.conds

    def cond(b):
        d = {"clip_vision_output": comfy.clip_vision.Output(), "concat_latent_image": inputs["image_latent"],
             "concat_mask": inputs["concat_mask"]}
        d["clip_vision_output"].penultimate_hidden_states = inputs["clip"]
        d["model_conds"] = {conds.REF_LATENT: comfy.conds.CONDRegular(inputs["ref_latent"]),
                            conds.REF_CONTEXT: comfy.conds.CONDRegular(inputs["ref_context"][b:b + 1]),
                            conds.REF_CLIP: comfy.conds.CONDRegular(inputs["ref_clip"])}
        return [[inputs["context"][b:b + 1], d]]
    return cond(0), cond(1)


# ------------------------------------------------------------------------------------------------- runs
class StepLog:
    """Per-step wall time and full MoT calls of one run, from the sampler's step callback (caches that skip a
    step skip the model call inside it, so counting calls per position in a call log would misalign)."""

    def __init__(self, counter):
        self.counter, self.steps = counter, []

    def start(self):
        self.t0, self.c0 = time.perf_counter(), self.counter.count

    def step_done(self, *_):
        now = time.perf_counter()
        self.steps.append({"wall": now - self.t0, "full_calls": self.counter.count - self.c0})
        self.t0, self.c0 = now, self.counter.count


def comfy_run(model, pack, inputs, steps: int, cfg_scale: float, log: StepLog):
    """One whole sampling run through ComfyUI's sampler; final latents in the model's latent space."""
    import torch
    import comfy.sample
    f, h, w = inputs["image_latent"].shape[2:]
    latent = torch.zeros(1, 16, f, h, w)
    noise = comfy.sample.prepare_noise(latent, 0)  # = torch.randn(shape, generator=manual_seed(0)), the official draw
    positive, negative = comfy_conds(pack, inputs)
    log.start()
    with torch.inference_mode():  # ComfyUI executes prompts under inference_mode
        out = comfy.sample.sample(model, noise, steps, cfg_scale, "euler", "normal", positive, negative, latent,
                                  seed=0, callback=log.step_done, disable_pbar=True)
        return model.model.process_latent_in(out).float()  # sample() hands back process_latent_out(x)


def official_condition(model, inputs):
    """The official pipeline's ``condition`` [1, 20, F, H, W] = cat(mask, normalised image latents), built from
    the same inputs by ComfyUI's own ``WAN21.concat_cond`` (what the pack's model gets as its extra channels)."""
    import torch
    noise = torch.zeros(1, 16, *inputs["image_latent"].shape[2:])
    return model.model.concat_cond(noise=noise, concat_latent_image=inputs["image_latent"],
                                   concat_mask=inputs["concat_mask"], device=torch.device("cpu"))


def official_run(model, scheduler_cls, condition, inputs, steps: int, cfg_scale: float, log: StepLog):
    """A denoising loop over the official transformer as ``pipeline_wan_i2v_mot`` runs it (our own code calling the
    official classes): fresh scheduler, cond then uncond per step, ``u + g (c - u)``, ``scheduler.step``."""
    import torch
    import comfy.sample
    f, h, w = inputs["image_latent"].shape[2:]
    latents = comfy.sample.prepare_noise(torch.zeros(1, 16, f, h, w), 0)
    scheduler = scheduler_cls()  # default config: shift 1, as the official pipeline's
    scheduler.set_timesteps(steps)
    ref_t = torch.ones(1, 1)  # timestep_list_mot_ref: the clean reference, constant 1
    log.start()
    with torch.no_grad():  # diffusers pipelines run under @torch.no_grad()
        for k, t in enumerate(scheduler.timesteps):
            x = torch.cat([latents, condition], dim=1)
            pred = [model(hidden_states=x, timestep=t.expand(1), encoder_hidden_states=inputs["context"][b:b + 1],
                          encoder_hidden_states_image=inputs["clip"], num_mot_ref=1,
                          hidden_states_mot_ref=inputs["ref_latent"], timestep_list_mot_ref=ref_t,
                          encoder_hidden_states_mot_ref=inputs["ref_context"][b:b + 1],
                          encoder_hidden_states_image_mot_ref=inputs["ref_clip"], return_dict=False)[0]
                    for b in (0, 1)]
            log.counter.count += 2
            guided = pred[1] + cfg_scale * (pred[0] - pred[1])
            latents = scheduler.step(guided, t, latents, return_dict=False)[0]
            log.step_done()
    return latents.float(), scheduler.sigmas


def cache_node(kind: str, threshold: float, opts):
    from comfy_extras import nodes_easycache
    cls = nodes_easycache.EasyCacheNode if kind == "EasyCache" else nodes_easycache.LazyCacheNode

    def patch(model):
        return cls.execute(model, reuse_threshold=threshold, start_percent=opts.start_percent,
                           end_percent=opts.end_percent, verbose=False).result[0]
    return patch


def comfy_models(pack, base, expert, opts) -> dict:
    """name -> ModelPatcher: base -> ModelSamplingSD3(shift 1) -> Apply VAP Expert -> [cache node]."""
    from comfy_extras.nodes_model_advanced import ModelSamplingSD3
    shifted = ModelSamplingSD3().patch(base, shift=1.0)[0]
    exact = pack.vap_core.expert.loading.apply_expert(shifted, expert)
    models = {EXACT: exact}
    for t in opts.easycache:
        models[f"pack + EasyCache {t:g}"] = cache_node("EasyCache", t, opts)(exact)
    for t in opts.lazycache:
        models[f"pack + LazyCache {t:g}"] = cache_node("LazyCache", t, opts)(exact)
    return models


# ------------------------------------------------------------------------------------------------- main
def diff(a, b) -> dict:
    d = (a - b).abs()
    return {"max_abs": d.max().item(), "mean_abs": d.mean().item()}


def run_all(pack, info, latent, opts, official_cls, scheduler_cls) -> dict:
    import comfy.samplers
    base, expert, _ = bench_wan.load_comfy(pack, info)
    models = comfy_models(pack, base, expert, opts)
    inputs = make_inputs(info["config"], latent)
    official = condition = None
    if official_cls is not None:
        from safetensors.torch import load_file
        cfg = info["config"]
        official = official_cls(**{k: v for k, v in cfg.items() if not k.startswith("_")})
        official.load_state_dict(load_file(info["paths"]["official_file"]), strict=True)
        official.eval()
        condition = official_condition(models[EXACT], inputs)
    counter = common.CallCounter(pack.vap_core.wan.mot, "vap_forward")  # one per full (uncached) model call
    names = list(models) + ([OFFICIAL] if official is not None else [])
    runs = {n: [] for n in names}
    outs, sigmas = {}, {}
    with counter:
        for r in range(opts.repeats):
            for n in common.rotated(names, r):
                log = StepLog(counter)
                gc.collect()
                c0, t0 = time.process_time(), time.perf_counter()
                if n == OFFICIAL:
                    outs[n], sigmas[n] = official_run(official, scheduler_cls, condition, inputs, opts.steps,
                                                      opts.cfg, log)
                else:
                    outs[n] = comfy_run(models[n], pack, inputs, opts.steps, opts.cfg, log)
                wall, cpu = time.perf_counter() - t0, time.process_time() - c0
                common.LOADAVG.append(os.getloadavg()[0])
                runs[n].append({"wall": wall, "cpu": cpu, "steps": log.steps, "loadavg": os.getloadavg()[0]})
                skipped = [k for k, s in enumerate(log.steps) if s["full_calls"] == 0]
                print(f"   {n:24s} {wall:8.1f}s wall {cpu:8.1f}s CPU  full model calls "
                      f"{sum(s['full_calls'] for s in log.steps)}  skipped steps {skipped}", flush=True)
    ms = models[EXACT].get_model_object("model_sampling")
    comfy_sigmas = comfy.samplers.calculate_sigmas(ms, "normal", opts.steps)
    result = {"runs": runs, "latent_mean_abs": outs[EXACT].abs().mean().item(), "diff": {},
              "comfy_sigmas": comfy_sigmas.tolist()}
    for n in names:
        if n != EXACT:
            result["diff"][n] = diff(outs[n], outs[EXACT])
    if OFFICIAL in sigmas:
        result["sigmas_max_abs_diff"] = (sigmas[OFFICIAL].float() - comfy_sigmas.float()).abs().max().item()
    return result


def computed_step(runs: list) -> float:
    """Median wall time of the steps that made a full model call, over all runs of a kind, step 0 left out (the
    pack builds its reference cache there): what one computed step costs, less sensitive than a whole run to a
    burst of load from other processes."""
    import statistics
    vals = [s["wall"] for x in runs for k, s in enumerate(x["steps"]) if k > 0 and s["full_calls"] > 0]
    return statistics.median(vals) if vals else float("nan")


def write_markdown(result: dict, path: str):
    env, r = result["environment"], result["result"]
    runs = r["runs"]
    import statistics

    def med(n, key="wall"):
        return statistics.median(x[key] for x in runs[n])
    lines = [f"# Wan VAP whole videos: exact vs EasyCache vs LazyCache vs official (CPU, float32, {result['config']})", "",
             f"Generated by `{result['command']}` on {env['date']}.", ""] + common.environment_lines(env)[:4] + [
        f"- model `{result['config']}`: {result['model_summary']}; {result['steps']} steps, euler / `normal`, shift 1 "
        f"(sigmas: ComfyUI vs the official scheduler max abs {r.get('sigmas_max_abs_diff', float('nan')):.1e}), "
        f"CFG {result['cfg']}; caches after Apply VAP Expert, start/end percent {result['start_percent']:g}/"
        f"{result['end_percent']:g}; {result['repeats']} run(s) each, interleaved",
        "- random weights: the output differences are what the caches do to this random network; they do not "
        "predict how far a cache moves the released weights' output (see bench/README.md)", "",
        "| run | wall s | min-max s | CPU s | / pack exact | / official | s per computed step | full model calls "
        "| steps skipped | max abs vs pack exact | mean abs vs pack exact | mean abs / mean abs latent |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for n in runs:
        steps = runs[n][-1]["steps"]
        skipped = [k for k, s in enumerate(steps) if s["full_calls"] == 0]
        d = r["diff"].get(n)
        dcols = ("| 0 | 0 | 0 " if d is None else
                 f"| {d['max_abs']:.3g} | {d['mean_abs']:.3g} | {d['mean_abs'] / r['latent_mean_abs']:.3f} ")
        ratio_off = f"{med(n) / med(OFFICIAL):.2f}" if OFFICIAL in runs else "n/a"
        walls = [x["wall"] for x in runs[n]]
        lines.append(f"| {n} | {fmt_s(med(n))} | {fmt_s(min(walls))}-{fmt_s(max(walls))} | {fmt_s(med(n, 'cpu'))} "
                     f"| {med(n) / med(EXACT):.2f} | {ratio_off} | {fmt_s(computed_step(runs[n]))} "
                     f"| {sum(s['full_calls'] for s in steps)} | {len(skipped)} of {len(steps)}"
                     f"{' (' + ','.join(map(str, skipped)) + ')' if skipped else ''} {dcols}|")
    lines += [""] + [f"Note: {n}" for n in result.get("notes", [])]
    lines += ["", f"Mean abs of the pack exact final latents: {r['latent_mean_abs']:.3g}. Full model calls: ComfyUI "
              "batches cond + uncond into one call per step; the official loop makes two batch-1 calls per step. "
              "Columns: see bench/README.md (bench_caches.py).", ""]
    with open(path, "w") as f:
        f.write("\n".join(lines))


def parse_floats(s: str) -> list[float]:
    return [float(v) for v in s.split(",") if v.strip()]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", choices=list(bench_wan.CONFIGS), default="mid", help="model size (bench_wan.py CONFIGS)")
    ap.add_argument("--latent", default=None,
                    help="F,H,W latent size instead of the config's (e.g. a quick look at the cache decisions)")
    ap.add_argument("--steps", type=int, default=12, help="sampling steps per video")
    ap.add_argument("--cfg", type=float, default=5.0, help="guidance scale (the official default)")
    ap.add_argument("--easycache-thresholds", dest="easycache", type=parse_floats, default=[0.5, 1.0],
                    help="comma list of EasyCache reuse_threshold values, one run each")
    ap.add_argument("--lazycache-thresholds", dest="lazycache", type=parse_floats, default=[0.5],
                    help="comma list of LazyCache reuse_threshold values, one run each")
    ap.add_argument("--start-percent", type=float, default=0.15, help="cache start_percent (core default)")
    ap.add_argument("--end-percent", type=float, default=0.95, help="cache end_percent (core default)")
    ap.add_argument("--repeats", type=int, default=1, help="runs of each kind, interleaved, order rotated")
    ap.add_argument("--attention", choices=("sdpa", "comfy-default"), default="sdpa")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    ap.add_argument("--official-src", default=os.environ.get("VAP_OFFICIAL_SRC"),
                    help="Video-As-Prompt checkout (default: $VAP_OFFICIAL_SRC); without it the official run is skipped")
    ap.add_argument("--note", action="append", default=[], help="a line for the results file (e.g. what else ran)")
    ap.add_argument("--out", default=RESULTS_DIR, help="where caches.md / caches.json go")
    opts = ap.parse_args()

    load_before = os.getloadavg()[0]
    pack, backend = bench_wan.setup_host(opts.attention, opts.threads)
    official_cls, official_where = bench_wan.official_class(opts.official_src)
    scheduler_cls = None
    if official_cls is not None:
        from diffusers.schedulers import FlowMatchEulerDiscreteScheduler as scheduler_cls
    else:
        print(f"NOTE: the official run is skipped: {official_where}", flush=True)
    env = common.environment(
        backend, f"WanTransformer3DMOTModel + FlowMatchEulerDiscreteScheduler from {official_where}"
        if official_cls else f"SKIPPED: {official_where}", "")
    latent = tuple(int(v) for v in opts.latent.split(",")) if opts.latent else bench_wan.CONFIGS[opts.config]["latent"]
    with tempfile.TemporaryDirectory(prefix="vap_bench_caches_") as root:
        print(f"== {opts.config}: preparing the checkpoint", flush=True)
        info = bench_wan.prepare_checkpoint(pack, opts.config, root)
        cfg = info["config"]
        tokens = latent[0] * (latent[1] // 2) * (latent[2] // 2)
        summary = (f"dim {cfg['num_attention_heads'] * cfg['attention_head_dim']}, {cfg['num_layers']} layers, "
                   f"experts on {cfg['block_idx_with_mot_ref']}, latent {'x'.join(map(str, latent))} = {tokens} "
                   f"target + {tokens} reference tokens")
        print(f"   {summary}; {opts.steps} steps, runs: pack exact, EasyCache {opts.easycache}, LazyCache "
              f"{opts.lazycache}, official", flush=True)
        res = run_all(pack, info, latent, opts, official_cls, scheduler_cls)
    common.finish_environment(env, load_before)
    result = {"command": "python bench/bench_caches.py " + " ".join(sys.argv[1:]), "environment": env,
              "config": opts.config, "model_summary": summary, "steps": opts.steps, "cfg": opts.cfg,
              "start_percent": opts.start_percent, "end_percent": opts.end_percent, "repeats": opts.repeats,
              "result": res, "notes": opts.note}
    os.makedirs(opts.out, exist_ok=True)
    with open(os.path.join(opts.out, "caches.json"), "w") as f:
        json.dump(result, f, indent=1)
    write_markdown(result, os.path.join(opts.out, "caches.md"))
    with open(os.path.join(opts.out, "caches.md")) as f:
        print("\n" + f.read())


if __name__ == "__main__":
    main()
