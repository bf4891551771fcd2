"""Cost per sampling step of the reference guidance (VAP Reference Guider) next to the official guidance.

    python bench/bench_reference_guidance.py [--configs small,mid] [--repeats N] [--steps N]

Wan, float32, CPU, random weights in the official layout (the ``bench_wan.py`` sizes: experts on every 4th
block as the release, a reference as long as the target). Modes, all through ``guider.sample`` (euler) with
the pack's guider on the pack's patched model, conds as the VAP conditioning node builds them:
  official        reference_scale 0 (= core CFGGuider): one batched VAP call (cond + uncond) per step
  scale           reference_scale 1: + one plain-base call (positive without the reference)
  neg-drop        negative_without_reference, scale 0: one VAP call (cond) + one base call (negative)
  neg-drop+scale  both: one VAP call (cond) + one batched base call (negative, positive without reference)
  plain base CFG  the base model with no reference at all (the floor: what a step costs without VAP)
Each timed repeat runs every mode once (order rotated), one whole ``--steps``-step sampling run each. Every
model call is timed (ComfyUI's ``model_function_wrapper``: wall and process CPU time) and logged with its batch
size and whether an expert module ran; "model s / step" sums a step's model calls (the cost the guidance mode
changes), as a ratio to ``official``. On a shared machine the CPU-time ratio is the one to read (wall time
swings with other processes' load); ``--threads 1`` makes it cleaner still.
Writes ``bench/results/reference_guidance.md`` / ``.json``. Not a test: nothing here asserts.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
import bench_wan  # noqa: E402  (its CONFIGS, checkpoint and input helpers)
from common import LOADAVG, RESULTS_DIR, fmt_s, summarize  # noqa: E402

CONFIGS = {
    **bench_wan.CONFIGS,
    # between tiny and mid: dim 512, 8 layers, experts on blocks 0 and 4, 1024 target tokens (+ 1024 reference)
    "small": {"model": {"num_attention_heads": 4, "attention_head_dim": 128, "ffn_dim": 512, "num_layers": 8,
                        "block_idx_with_mot_ref": [0, 4], "added_kv_proj_dim": 512},
              "latent": (4, 32, 32)},
}
MODES = {  # name -> (reference_scale, negative_without_reference, with the reference)
    "official": (0.0, False, True),
    "scale": (1.0, False, True),
    "neg-drop": (0.0, True, True),
    "neg-drop+scale": (1.0, True, True),
    "plain base CFG": (0.0, False, False),
}


def conds(pack, inputs, with_ref: bool):
    """positive, negative as the VAP Wan conditioning node builds them (target I2V conds + reference)."""
    import comfy.clip_vision
    import comfy.conds
    import torch
    wa = pack.vap_core.wan.apply
    x = inputs["x"]

    def one(k):
        d = {"clip_vision_output": comfy.clip_vision.Output(), "concat_latent_image": x[:, 20:],
             "concat_mask": torch.zeros(1, 1, *x.shape[2:])}
        d["clip_vision_output"].penultimate_hidden_states = inputs["clip"]
        if with_ref:
            d["model_conds"] = {wa.REF_LATENT: comfy.conds.CONDRegular(inputs["ref_latent"]),
                                wa.REF_CONTEXT: comfy.conds.CONDRegular(inputs["ref_context"][k:k + 1]),
                                wa.REF_CLIP: comfy.conds.CONDRegular(inputs["ref_clip"])}
        return [[inputs["context"][k:k + 1], d]]
    return one(0), one(1)


def prepare_checkpoint(pack, name: str, root: str) -> dict:
    """Official-layout random checkpoint converted by the pack (the random model of vap_headless.demo)."""
    from vap_headless.demo.tiny_wan import DEFAULT_CONFIG, official_wan_mot_state_dict
    from wan_fixtures import write_official_folder
    sd, cfg = official_wan_mot_state_dict({**DEFAULT_CONFIG, **CONFIGS[name]["model"]}, seed=0)
    return common.convert_checkpoint(pack, sd, cfg, write_official_folder, root, name)


def run_config(pack, name: str, root: str, opts) -> dict:
    import comfy.samplers
    import torch
    info = prepare_checkpoint(pack, name, root)
    cfg = info["config"]
    base, expert, patched = bench_wan.load_comfy(pack, info)
    inputs = bench_wan.make_inputs(cfg, CONFIGS[name]["latent"])
    latent = torch.zeros(1, 16, *CONFIGS[name]["latent"])
    noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(0))
    sigmas = torch.linspace(1.0, 0.0, opts.steps + 1)
    sampler = comfy.samplers.sampler_object("euler")
    class ExpertCalls:  # forward calls into any leaf module of the expert (0 during a plain-base call)
        count = 0
    counter = ExpertCalls()
    hooks = [leaf.register_forward_pre_hook(lambda m, a: setattr(counter, "count", counter.count + 1))
             for leaf in expert.module.modules() if not list(leaf.children())]
    calls = {m: [] for m in MODES}

    def make_run(mode):
        scale, drop, with_ref = MODES[mode]
        model = common.timed_model_calls(patched if with_ref else base, calls[mode], counter)
        positive, negative = conds(pack, inputs, with_ref)
        guider = pack.vap_core.reference_guider.ReferenceGuider(model, scale, drop)
        guider.set_conds(positive, negative)
        guider.set_cfg(5.0)
        return lambda _k: guider.sample(noise, latent, sampler, sigmas, seed=0, disable_pbar=True)

    runs = {m: make_run(m) for m in MODES}
    timings, _ = common.time_steps(runs, opts.repeats)
    for h in hooks:
        h.remove()
    result = {"config": name, "latent": CONFIGS[name]["latent"], "steps": opts.steps, "modes": {}}
    for m in MODES:
        runs_done = len(timings[m]["all"]) + 1  # + the warm-up run
        per_step_calls = len(calls[m]) // (runs_done * opts.steps)
        timed_calls = calls[m][per_step_calls * opts.steps:]  # without the warm-up run's calls
        # model time per step: the model calls of one step summed (what the guidance mode changes), per timed step
        model_steps = [sum(c["wall"] for c in timed_calls[k:k + per_step_calls])
                       for k in range(0, len(timed_calls), per_step_calls)]
        # process CPU time of the same calls: the work itself, much less sensitive to other processes' load
        cpu_steps = [sum(c["cpu"] for c in timed_calls[k:k + per_step_calls])
                     for k in range(0, len(timed_calls), per_step_calls)]
        last = calls[m][-per_step_calls:]  # the last step's model calls: batch size, whether the expert ran
        result["modes"][m] = {"model_per_step": summarize(model_steps), "cpu_per_step": summarize(cpu_steps),
                              "run_per_step": summarize([t / opts.steps for t in timings[m]["all"]]),
                              "calls_per_step": [f"{c['batch']} {'VAP' if c['counted'] else 'base'}" for c in last]}
    official = result["modes"]["official"]["model_per_step"]["median"]
    official_cpu = result["modes"]["official"]["cpu_per_step"]["median"]
    for m in MODES:
        result["modes"][m]["ratio"] = result["modes"][m]["model_per_step"]["median"] / official
        result["modes"][m]["cpu_ratio"] = result["modes"][m]["cpu_per_step"]["median"] / official_cpu
    del base, expert, patched
    return result


def write_markdown(results: list, env: dict, opts, path: str):
    lines = ["# Reference guidance: cost per sampling step (CPU, float32)", "",
             f"Generated by `python bench/bench_reference_guidance.py --configs {opts.configs} --repeats "
             f"{opts.repeats} --steps {opts.steps}" + (f" --threads {opts.threads}" if opts.threads else "")
             + f"` on {env['date']}.", ""]
    lines += [l for l in common.environment_lines(env) if not l.startswith("- memory") and "official:" not in l]
    lines += ["", "| config | mode | model calls per step (batch, kind) | model CPU s / step (median, min-max) | "
              "CPU vs official | model wall s / step (median, min-max) | wall vs official |",
              "|---|---|---|---|---|---|---|"]
    for r in results:
        for m, v in r["modes"].items():
            s, c = v["model_per_step"], v["cpu_per_step"]
            lines.append(f"| {r['config']} | {m} | {' + '.join(map(str, v['calls_per_step']))} | "
                         f"{fmt_s(c['median'])} ({fmt_s(c['min'])}-{fmt_s(c['max'])}) | {v['cpu_ratio']:.2f}x | "
                         f"{fmt_s(s['median'])} ({fmt_s(s['min'])}-{fmt_s(s['max'])}) | {v['ratio']:.2f}x |")
    lines += ["", "Modes: see the script's docstring. Batch sizes: ComfyUI batches cond and uncond of the same kind "
              "into one call; a cond without the reference has other entries, so it runs in a call of its own "
              "(a plain-base call: no expert block runs in it)."]
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", default="small", help="comma list of: " + ",".join(CONFIGS))
    ap.add_argument("--repeats", type=int, default=3, help="timed sampling runs per mode (after 1 warm-up)")
    ap.add_argument("--steps", type=int, default=2, help="sampling steps per run")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default=RESULTS_DIR)
    opts = ap.parse_args(argv)
    chosen = common.selected_configs(ap, opts, CONFIGS)
    load_before = os.getloadavg()[0]
    pack, backend = common.setup_host("sdpa", opts.threads)
    env = common.environment(backend, "not used", "not measured")
    results = []
    with tempfile.TemporaryDirectory(prefix="vap_refguide_") as root:
        for name in chosen:
            t0 = time.perf_counter()
            results.append(run_config(pack, name, root, opts))
            print(f"{name}: {time.perf_counter() - t0:.0f} s", flush=True)
            for m, v in results[-1]["modes"].items():
                print(f"  {m:16s} cpu {v['cpu_per_step']['median']:.3f} s/step {v['cpu_ratio']:.2f}x  wall {v['ratio']:.2f}x  calls {v['calls_per_step']}")
    common.finish_environment(env, load_before)
    os.makedirs(opts.out, exist_ok=True)
    with open(os.path.join(opts.out, "reference_guidance.json"), "w", encoding="utf-8") as f:
        json.dump({"environment": env, "results": results, "loadavg": LOADAVG}, f, indent=1, default=str)
    write_markdown(results, env, opts, os.path.join(opts.out, "reference_guidance.md"))
    print("wrote", os.path.join(opts.out, "reference_guidance.md"))


if __name__ == "__main__":
    main()
