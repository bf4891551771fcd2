"""Speed and memory of the pack's Wan VAP model next to ComfyUI's plain Wan and the official code.

    python bench/bench_wan.py [--attention sdpa|comfy-default] [--configs tiny,mid] [--repeats N]

Implementations, all float32 on CPU with IDENTICAL random weights (one official-layout state dict from
``vap_headless.demo.tiny_wan.official_wan_mot_state_dict``):
  base      ComfyUI's native ``WanModel`` alone (the converted base, no reference).
  pack      the converted checkpoint through ComfyUI's loader + the pack's expert loader, ``apply_expert``,
            ``WanModel.forward`` with the VAP wrapper and ``transformer_options={"wrappers", "uuids"}`` so the
            per-run reference cache is active as in real sampling.
  official  ``WanTransformer3DMOTModel`` of the official fork (``VAP_OFFICIAL_SRC`` / ``--official-src``:
            a checkout of github.com/bytedance/Video-As-Prompt), strict ``load_state_dict``.
One denoising step = cond + uncond the way each implementation does CFG: ComfyUI (base, pack) one batch-2
call (ComfyUI batches cond and uncond), official two batch-1 calls (exactly as its pipeline does).

Timing runs in this process, interleaved: every repeat runs one step of each implementation, in an order
rotated per repeat, after one untimed warm-up step each (the pack's reference cache is filled in the warm-up,
as in the first step of a sampling run). Peak memory runs in a fresh subprocess per implementation and
config (``common.measure_peak``). The optional expert active range (``apply_expert(start=0, end=0.5)``) is timed
over whole ``comfy.sample.sample`` runs (euler, simple schedule, CFG) against the full range, with every model
call timed and its expert blocks counted (``sampling_active_range``); ``--sampling-only`` runs just that.
Shared with ``bench_cog.py``: ``common.py``.

Writes ``bench/results/wan_bench.md`` (the tables) and ``bench/results/wan_bench.json`` (everything).
Not a test: nothing here asserts; numbers depend on the machine and on its load.
"""
from __future__ import annotations

import argparse
import gc
import json
import math
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402  (bench/common.py: what bench_wan.py and bench_cog.py share)
from common import LOADAVG, RESULTS_DIR, fmt_s, summarize, time_steps, profile_steps  # noqa: E402

# pack-split: the pack with cond and uncond as two batch-1 calls, what ComfyUI's sampler does by itself when
# the memory estimate says a batch-2 call does not fit (samplers.py _calc_cond_batch)
IMPLS = ("base", "pack", "pack-split", "official")

TEXT_TOKENS = 512   # T5 context, zero-padded to 512 in both pipelines
IMAGE_TOKENS = 257  # CLIP-H penultimate states

# Model sizes. "mid": dim 1024 (8 heads x 128), 8 layers, experts on every 4th block, 4096 target tokens
# (latent 4 x 64 x 64 with patch 1x2x2) and as many reference tokens (the official pipeline feeds a
# reference video of the target's length); text_dim / image_dim / in_channels as the release (T5 4096,
# CLIP-H 1280, I2V 36). That is the floor asked for; ffn_dim = dim (Wan2.1-14B has 2.7 x dim) keeps one
# official step near half a minute on 2 idle CPU cores: a wider FFN adds the same matmul FLOPs to all three.
CONFIGS = {
    "tiny": {"model": {"num_attention_heads": 1, "attention_head_dim": 128, "ffn_dim": 256, "num_layers": 4,
                       "block_idx_with_mot_ref": [0], "added_kv_proj_dim": 128},
             "latent": (2, 16, 16)},
    "mid": {"model": {"num_attention_heads": 8, "attention_head_dim": 128, "ffn_dim": 1024, "num_layers": 8,
                      "block_idx_with_mot_ref": [0, 4], "added_kv_proj_dim": 1024},
            "latent": (4, 64, 64)},
}


# ----------------------------------------------------------------------------------------------- FLOPs
def flops_per_sample(cfg: dict, latent: tuple, vap: bool, pack: bool = False) -> float:
    """Matmul + attention FLOPs of one forward of ONE sample (a multiply-add = 2 FLOPs).

    C = heads * head_dim, F = ffn_dim, L = target tokens = F_lat * H_lat/p_h * W_lat/p_w, R = reference
    tokens (= L here), T = 512 text tokens, I = 257 image tokens, D_t = text_dim, D_i = image_dim,
    P = prod(patch), mm(m, k, n) = 2 m k n; norms, RoPE, modulation and other elementwise work are left out.

      embeddings(n)  = mm(n, 36 P, C) + mm(1, freq_dim, C) + mm(1, C, C) + mm(1, C, 6C)      patch + time
                       + mm(T, D_t, C) + mm(T, C, C) + mm(I, D_i, D_i) + mm(I, D_i, C)        text + image
      self(n, m)     = 4 mm(n, C, C) + 4 n m C           q k v o of n tokens; QK^T and AV of n queries over m keys
      cross(n)       = 2 mm(n, C, C) + 4 mm(T + I, C, C) + 4 n (T + I) C      q o; k v, k_img v_img; attention
      ffn(n)         = 2 mm(n, C, F)
      block(n, m)    = self(n, m) + cross(n) + ffn(n)
      head           = mm(L, C, 16 P)

      base = embeddings(L) + N_layers block(L, L) + head
      VAP  = base + sum over expert blocks [block(L, L+R) - block(L, L) + block(R, L+R)]
                  + embeddings(R)   (official: every call)
      pack = the same, except what it computes once per sampling run or never: embeddings(R) are cached per
             run; in the last expert block only the reference k v are computed (2 mm(R, C, C)): its reference
             queries, o, cross-attention and FFN feed nothing (only the target is decoded)
    """
    c = cfg["num_attention_heads"] * cfg["attention_head_dim"]
    f = cfg["ffn_dim"]
    p = math.prod(cfg["patch_size"])
    lf, lh, lw = latent
    n_tok = lf * (lh // cfg["patch_size"][1]) * (lw // cfg["patch_size"][2])
    t, i = TEXT_TOKENS, IMAGE_TOKENS

    def mm(m, k, n):
        return 2.0 * m * k * n

    def embeddings(n):
        return (mm(n, cfg["in_channels"] * p, c) + mm(1, cfg["freq_dim"], c) + mm(1, c, c) + mm(1, c, 6 * c)
                + mm(t, cfg["text_dim"], c) + mm(t, c, c) + mm(i, cfg["image_dim"], cfg["image_dim"])
                + mm(i, cfg["image_dim"], c))

    def block(n, m):
        self_attn = 4 * mm(n, c, c) + 4.0 * n * m * c
        cross = 2 * mm(n, c, c) + 4 * mm(t + i, c, c) + 4.0 * n * (t + i) * c
        return self_attn + cross + 2 * mm(n, c, f)

    L = R = n_tok
    total = embeddings(L) + cfg["num_layers"] * block(L, L) + mm(L, c, cfg["out_channels"] * p)
    if vap:
        experts = cfg["block_idx_with_mot_ref"]
        for j in range(len(experts)):
            total += block(L, L + R) - block(L, L)  # target queries also see the reference keys
            last = j == len(experts) - 1
            if not pack:
                total += block(R, L + R)
            elif last:
                total += 2 * mm(R, c, c)  # reference k, v only
            else:
                total += block(R, L + R)
        if not pack:
            total += embeddings(R)
    return total


def shared_first_block_flops(cfg: dict, latent: tuple) -> float:
    """What the pack's batched call computes once instead of twice: when block 0 is an expert block, cond and
    uncond carry the same target tokens there (their texts enter at the cross-attention), so the joint
    self-attention of both streams, self(L, L+R) + self(R, L+R), runs once for both rows (``attention_rows``)."""
    experts = cfg["block_idx_with_mot_ref"]
    if not experts or experts[0] != 0 or len(experts) == 1:  # a last expert block runs no reference queries
        return 0.0
    c = cfg["num_attention_heads"] * cfg["attention_head_dim"]
    n = latent[0] * (latent[1] // cfg["patch_size"][1]) * (latent[2] // cfg["patch_size"][2])
    self_attn = 4 * 2.0 * n * c * c + 4.0 * n * (2 * n) * c
    return 2 * self_attn


def step_flops(cfg, latent):
    """FLOPs of one denoising step (cond + uncond = 2 samples) per implementation."""
    return {"base": 2 * flops_per_sample(cfg, latent, vap=False),
            "pack": 2 * flops_per_sample(cfg, latent, vap=True, pack=True) - shared_first_block_flops(cfg, latent),
            "pack-split": 2 * flops_per_sample(cfg, latent, vap=True, pack=True),
            "official": 2 * flops_per_sample(cfg, latent, vap=True)}


# ------------------------------------------------------------------------------------------- host set-up
def setup_host(attention: str, threads: int | None):
    """Import ComfyUI (CPU) with the chosen attention backend, then the pack. Returns (pack, backend name)."""
    def users(pack):
        import comfy.ldm.wan.model as wan_model
        return (wan_model, pack.vap_core.wan.mot)
    return common.setup_host(attention, threads, users)


def official_class(src: str | None):
    """WanTransformer3DMOTModel from a Video-As-Prompt checkout (or its diffusers/src), or (None, why)."""
    cand, why = common.official_src_dir(src, os.path.join("models", "transformers", "transformer_wan_mot.py"))
    if cand is None:
        return None, why
    try:
        from diffusers.models.transformers.transformer_wan_mot import WanTransformer3DMOTModel
    except ImportError as e:
        return None, f"importing the official model from {cand} failed: {e!r} (install diffusers' deps)"
    return WanTransformer3DMOTModel, cand


# ---------------------------------------------------------------------------------------- model loading
def model_config(name: str, pack) -> dict:
    from vap_headless.demo import tiny_wan  # the demo models live in the headless package (not in the pack's core)
    return {**tiny_wan.DEFAULT_CONFIG, **CONFIGS[name]["model"]}


def prepare_checkpoint(pack, name: str, root: str) -> dict:
    """Official-layout random checkpoint on disk + the pack's conversion of it. Returns paths and config."""
    from wan_fixtures import write_official_folder
    from vap_headless.demo import tiny_wan
    sd, cfg = tiny_wan.official_wan_mot_state_dict(model_config(name, pack), seed=0)
    return common.convert_checkpoint(pack, sd, cfg, write_official_folder, root, name)


def make_inputs(cfg: dict, latent: tuple, seed: int = 1):
    """One CFG pair: the same noisy latent / image condition / CLIP features for cond and uncond, different
    text contexts for the target and for the reference branch (as the pipelines feed them)."""
    import torch
    g = torch.Generator().manual_seed(seed)
    f, h, w = latent
    x = torch.randn(1, cfg["in_channels"], f, h, w, generator=g)
    ref = torch.randn(1, cfg["in_channels"], f, h, w, generator=g)
    return {
        "x": x, "ref_latent": ref,
        "context": torch.randn(2, TEXT_TOKENS, cfg["text_dim"], generator=g),       # [cond, uncond]
        "ref_context": torch.randn(2, TEXT_TOKENS, cfg["text_dim"], generator=g),   # [cond, uncond]
        "clip": torch.randn(1, IMAGE_TOKENS, cfg["image_dim"], generator=g),
        "ref_clip": torch.randn(1, IMAGE_TOKENS, cfg["image_dim"], generator=g),
    }


def timestep(k: int) -> float:
    """Timestep (0..1000) of step k of a made-up schedule: the cost does not depend on it."""
    return 999.0 - 37.0 * (k % 25)


def load_comfy(pack, info, with_expert=True):
    """ComfyUI's loader for the base, the pack's for the expert, then load_models_gpu as sampling does
    (base + the expert, registered as an additional model). Without the expert: (base, None, None)."""
    import comfy.model_management
    import comfy.sd
    base = comfy.sd.load_diffusion_model(info["paths"]["base"])
    if not with_expert:
        comfy.model_management.load_models_gpu([base])
        return base, None, None
    expert = pack.vap_core.expert.loading.load_expert(info["paths"]["expert"])
    patched = pack.vap_core.expert.loading.apply_expert(base, expert)
    comfy.model_management.load_models_gpu([patched])
    return base, expert, patched


def make_step(impl: str, pack, info, inputs, official_cls=None, loaded=None):
    """A function step(k) running one denoising step (cond + uncond) of ``impl``; returns its output."""
    import torch
    cfg = info["config"]
    if impl == "official":
        from safetensors.torch import load_file
        model = official_cls(**{k: v for k, v in cfg.items() if not k.startswith("_")})
        model.load_state_dict(load_file(info["paths"]["official_file"]), strict=True)
        model.eval()
        one = torch.ones(1, 1)  # the pipeline's timestep_list_mot_ref: constant 1, shape [num_mot_ref, 1]

        def step(k):
            t = torch.full((1,), timestep(k))
            with torch.no_grad():  # diffusers pipelines run under @torch.no_grad()
                outs = [model(hidden_states=inputs["x"], timestep=t, encoder_hidden_states=inputs["context"][b:b + 1],
                              encoder_hidden_states_image=inputs["clip"], return_dict=False, num_mot_ref=1,
                              hidden_states_mot_ref=inputs["ref_latent"], timestep_list_mot_ref=one,
                              encoder_hidden_states_mot_ref=inputs["ref_context"][b:b + 1],
                              encoder_hidden_states_image_mot_ref=inputs["ref_clip"])[0]
                        for b in (0, 1)]  # cond, then uncond: two calls, as pipeline_wan_i2v_mot.py
            return torch.cat(outs)
        return step, model

    base, expert, patched = loaded if loaded is not None else load_comfy(pack, info, with_expert=impl.startswith("pack"))
    wa = pack.vap_core.wan.apply
    x2 = inputs["x"].repeat(2, 1, 1, 1, 1)
    clip2 = inputs["clip"].repeat(2, 1, 1)
    ref = {wa.REF_LATENT: inputs["ref_latent"].repeat(2, 1, 1, 1, 1), wa.REF_CONTEXT: inputs["ref_context"],
           wa.REF_CLIP: inputs["ref_clip"].repeat(2, 1, 1)}
    patcher = patched if impl.startswith("pack") else base
    extra = ref if impl.startswith("pack") else {}
    uuids = ["bench-cond", "bench-uncond"]  # stable over a run: the pack's reference cache stays valid
    dm = patcher.model.diffusion_model

    if impl == "pack-split":
        def step(k):
            t = torch.full((1,), timestep(k))
            outs = []
            for b in (0, 1):
                options = {"wrappers": patcher.wrappers, "uuids": [uuids[b]]}
                with torch.inference_mode():
                    outs.append(dm(inputs["x"], t, inputs["context"][b:b + 1], clip_fea=inputs["clip"],
                                   transformer_options=options, **{n: v[b:b + 1] for n, v in extra.items()}))
            return torch.cat(outs)
        return step, (base, expert, patched)

    def step(k):
        t = torch.full((2,), timestep(k))
        options = {"wrappers": patcher.wrappers, "uuids": list(uuids)}
        with torch.inference_mode():  # ComfyUI executes prompts under inference_mode
            return dm(x2, t, inputs["context"], clip_fea=clip2, transformer_options=options, **extra)
    return step, (base, expert, patched)


# ------------------------------------------------------------------------------------------------ memory
def memory_worker(opts):
    """Runs in a fresh process (one implementation, one config): ``common.measure_peak`` of two steps."""
    pack, backend = setup_host(opts.attention, opts.threads)
    info = json.loads(opts.worker_info)
    official_cls = None
    if opts.impl == "official":
        official_cls, _ = official_class(opts.official_src)
    inputs = make_inputs(info["config"], tuple(info["latent"]))
    step, models = make_step(opts.impl, pack, info, inputs, official_cls)
    common.print_memory_result({**common.measure_peak(step, resident=models), "backend": backend})


def run_memory(impl, name, info, latent, opts):
    worker_info = {"paths": info["paths"], "config": info["config"], "latent": list(latent)}
    return common.run_memory(__file__, impl, worker_info, opts)


# ------------------------------------------------------------------------------------------------ timing
def sampling_active_range(pack, base, expert, cfg, inputs, n_steps: int, repeats: int, cfg_scale: float = 5.0):
    """Whole comfy.sample.sample runs (euler, simple): expert over the full schedule vs start=0, end=0.5,
    and the plain base (conds without the reference) for scale. Interleaved repeats (order rotated), fresh
    cond uuids per run.

    Instrumented without changing what runs: every model call (one per step: cond and uncond batched, or
    two when ComfyUI splits them) is timed through ComfyUI's ``model_function_wrapper`` hook, and the
    expert blocks it ran are counted (calls of ``wan_mot.joint_block``). So the table shows where the
    expert was on, and compares the steps themselves: a step outside the range must cost what a plain
    base step costs in the same run, a step inside it what a full-range step costs."""
    import torch
    import comfy.clip_vision
    import comfy.conds
    import comfy.sample
    wa = pack.vap_core.wan.apply
    apply_expert = pack.vap_core.expert.loading.apply_expert
    calls = {"full": [], "0-0.5": [], "plain base": []}
    counter = common.CallCounter(pack.vap_core.wan.mot, "joint_block")
    untimed = {"full": apply_expert(base, expert), "0-0.5": apply_expert(base, expert, start=0.0, end=0.5),
               "plain base": base}
    models = {n: common.timed_model_calls(m, calls[n], counter) for n, m in untimed.items()}

    def cond(text, ref_text, with_ref):
        d = {"clip_vision_output": comfy.clip_vision.Output()}
        d["clip_vision_output"].penultimate_hidden_states = inputs["clip"]
        d["concat_latent_image"] = inputs["x"][:, 20:]
        d["concat_mask"] = torch.zeros(1, 1, *inputs["x"].shape[2:])
        if with_ref:
            d["model_conds"] = {wa.REF_LATENT: comfy.conds.CONDRegular(inputs["ref_latent"]),
                                wa.REF_CONTEXT: comfy.conds.CONDRegular(ref_text),
                                wa.REF_CLIP: comfy.conds.CONDRegular(inputs["ref_clip"])}
        return [[text, d]]

    latent = torch.zeros(1, 16, *inputs["x"].shape[2:])
    noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(0))

    def run(name):
        with_ref = name != "plain base"
        pos = cond(inputs["context"][0:1], inputs["ref_context"][0:1], with_ref)
        neg = cond(inputs["context"][1:2], inputs["ref_context"][1:2], with_ref)
        with torch.inference_mode():
            return comfy.sample.sample(models[name], noise, steps=n_steps, cfg=cfg_scale, sampler_name="euler",
                                       scheduler="simple", positive=pos, negative=neg, latent_image=latent,
                                       seed=0, disable_pbar=True)

    names = list(models)
    times = {n: [] for n in names}
    cpu = {n: [] for n in names}
    outs = {}
    with counter:
        for r in range(repeats):
            for n in common.rotated(names, r):
                c0, t0 = time.process_time(), time.perf_counter()
                outs[n] = run(n)
                times[n].append(time.perf_counter() - t0)
                cpu[n].append(time.process_time() - c0)
                LOADAVG.append(os.getloadavg()[0])
    full, half, plain = outs["full"].float(), outs["0-0.5"].float(), outs["plain base"].float()
    # steps whose schedule fraction index / (steps - 1) lies in [0, 0.5]
    active = sum(1 for k in range(n_steps) if k / max(1, n_steps - 1) <= 0.5)
    return {"steps": n_steps, "cfg": cfg_scale, "sampler": "euler/simple", "expert_steps_0_0.5": active,
            "times": {n: summarize(times[n]) for n in names}, "cpu": {n: summarize(cpu[n]) for n in names},
            "calls": {n: step_calls(calls[n], n_steps, repeats) for n in names},
            "half_vs_full": {"max_abs": (half - full).abs().max().item(), "mean_abs": (half - full).abs().mean().item()},
            "plain_vs_full": {"max_abs": (plain - full).abs().max().item(), "mean_abs": (plain - full).abs().mean().item()},
            "full_mean_abs": full.abs().mean().item()}


def step_calls(log: list, n_steps: int, runs: int) -> dict:
    """Per-step view of ``timed_model_calls`` logs of several runs: expert blocks per step (of the last run),
    model calls per step, and the wall / CPU time of each step position over the runs. A step's time is the
    sum of its model calls (more than one when ComfyUI split cond and uncond)."""
    calls_per_step = max(1, len(log) // (n_steps * runs))
    steps = []  # steps[k] = list over runs of (wall, cpu, expert blocks)
    for k in range(n_steps):
        per_run = []
        for r in range(runs):
            chunk = log[(r * n_steps + k) * calls_per_step:(r * n_steps + k + 1) * calls_per_step]
            per_run.append((sum(c["wall"] for c in chunk), sum(c["cpu"] for c in chunk),
                            sum(c["counted"] for c in chunk)))
        steps.append(per_run)
    return {"runs": runs, "calls_per_step": calls_per_step, "batch": log[0]["batch"] if log else None,
            "expert_blocks": [s[-1][2] for s in steps],
            "wall": [[c[0] for c in s] for s in steps], "cpu": [[c[1] for c in s] for s in steps]}


def step_time_summary(s: dict) -> dict:
    """Median wall time of one step, without step 0 (it builds the pack's per-run reference cache):
    full-range steps, 0-0.5 steps with the expert on / off, plain base steps."""
    import statistics

    def med(name, pick):
        c = s["calls"][name]
        vals = [t for k, per_run in enumerate(c["wall"]) if k > 0 and pick(k, c) for t in per_run]
        return statistics.median(vals) if vals else float("nan")
    on = lambda k, c: c["expert_blocks"][k] > 0  # noqa: E731
    return {"full": med("full", lambda k, c: True), "0-0.5 on": med("0-0.5", on),
            "0-0.5 off": med("0-0.5", lambda k, c: not on(k, c)), "plain": med("plain base", lambda k, c: True)}


# ----------------------------------------------------------------------------------------------- report
def write_markdown(result: dict, path: str):
    env = result["environment"]
    lines = ["# Wan VAP: pack vs official vs ComfyUI base (CPU, float32)", "",
             f"Generated by `{result['command']}` on {env['date']}.", ""] + common.environment_lines(env) + [""]
    timed = {name: c for name, c in result["configs"].items() if "timing" in c}
    if timed:
        lines += ["## Per denoising step (cond + uncond)", "",
                  "| config | impl | tokens tgt+ref | median s | min-max s | CPU s | pack/official | pack/base | impl/base |"
                  " GFLOP/step | FLOP ratio vs base | peak step RSS MiB | first step MiB | RSS loaded MiB |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for name, c in timed.items():
            t = c["timing"]
            for impl in IMPLS:
                if impl not in t:
                    lines.append(f"| {name} | {impl} | | skipped: {c.get('official_note', '')} | | | | | | | | | | |")
                    continue
                m = t[impl]
                ratio_off = (f"{m['median'] / t['official']['median']:.2f}"
                             if impl.startswith("pack") and "official" in t else "")
                ratio_base = f"{m['median'] / t['base']['median']:.2f}" if impl.startswith("pack") else ""
                impl_base = f"{m['median'] / t['base']['median']:.2f}"
                mem = c["memory"].get(impl, {})
                mem_cols = common.memory_columns(mem)
                tokens = c["tokens"] if impl == "base" else f"{c['tokens']}+{c['tokens']}"
                lines.append(f"| {name} | {impl} | {tokens} | {fmt_s(m['median'])} | {fmt_s(m['min'])}-{fmt_s(m['max'])} "
                             f"| {fmt_s(m['cpu']['median'])} "
                             f"| {ratio_off} | {ratio_base} | {impl_base} | {c['flops'][impl] / 1e9:.1f} "
                             f"| {c['flops'][impl] / c['flops']['base']:.2f} {mem_cols}|")
        lines += ["", "## Numerical agreement at one step (same weights, same inputs)", "",
                  "| config | max abs pack - official | max abs pack - base | mean abs official output |", "|---|---|---|---|"]
        for name, c in timed.items():
            a = c["agreement"]
            lines.append(f"| {name} | {a.get('pack_vs_official', 'n/a')} | {a['pack_vs_base']:.3g} | {a.get('official_mean_abs', 'n/a')} |")
    if not any(c.get("sampling") for c in result["configs"].values()):
        lines += ["", "Expert active range: not run here (`--sample-steps 0`); see `wan_active_range.md`."]
    else:
        lines += ["", "## Expert active range: `apply_expert(start=0.0, end=0.5)` vs full range (whole sampling run)", "",
              "| config | steps (expert on) | expert blocks per step: full / 0-0.5 / plain | runs | full s | 0-0.5 s "
              "| plain base s | speed-up wall (CPU) | expected from in-run step times | step s: full / 0-0.5 on / "
              "0-0.5 off / plain | off / plain | max abs 0-0.5 vs full | mean abs 0-0.5 vs full "
              "| mean abs plain vs full | mean abs full |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, c in result["configs"].items():
        s = c.get("sampling")
        if not s:
            continue
        tt, cc = s["times"], s["cpu"]
        n, k = s["steps"], s["expert_steps_0_0.5"]
        st = step_time_summary(s)
        expected = n * st["full"] / (k * st["full"] + (n - k) * st["plain"])
        blocks = " / ".join(",".join(str(b) for b in s["calls"][m]["expert_blocks"]) for m in ("full", "0-0.5", "plain base"))
        lines.append(
            f"| {name} | {n} ({k}) | {blocks} | {tt['full']['n']} "
            f"| {fmt_s(tt['full']['median'])} ({fmt_s(tt['full']['min'])}-{fmt_s(tt['full']['max'])}) "
            f"| {fmt_s(tt['0-0.5']['median'])} ({fmt_s(tt['0-0.5']['min'])}-{fmt_s(tt['0-0.5']['max'])}) "
            f"| {fmt_s(tt['plain base']['median'])} | {tt['full']['median'] / tt['0-0.5']['median']:.2f}x "
            f"({cc['full']['median'] / cc['0-0.5']['median']:.2f}x) | {expected:.2f}x "
            f"| {fmt_s(st['full'])} / {fmt_s(st['0-0.5 on'])} / {fmt_s(st['0-0.5 off'])} / {fmt_s(st['plain'])} "
            f"| {st['0-0.5 off'] / st['plain']:.2f} "
            f"| {s['half_vs_full']['max_abs']:.3g} | {s['half_vs_full']['mean_abs']:.3g} "
            f"| {s['plain_vs_full']['mean_abs']:.3g} | {s['full_mean_abs']:.3g} |")
    lines += ["", "Columns: see `bench/README.md`. Random weights: output differences show the mechanism, not the"
              " visual effect with the released weights.", ""]
    with open(path, "w") as f:
        f.write("\n".join(lines))


# ------------------------------------------------------------------------------------------------- main
def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    def sampling_arguments(ap):
        ap.add_argument("--sample-steps", type=int, default=4, help="steps of the active-range sampling runs (0: skip)")
        ap.add_argument("--sample-repeats", type=int, default=None,
                        help="interleaved repeats of each sampling run, order rotated (default: 5 when a pack step "
                             "takes < 5 s, else 2)")
        ap.add_argument("--sampling-only", action="store_true",
                        help="only the active-range sampling runs (no per-step table, no memory); writes "
                             "wan_active_range.md / .json instead of wan_bench.*")
    common.add_arguments(ap, CONFIGS, IMPLS, RESULTS_DIR, "wan_bench", sampling_arguments)
    opts = ap.parse_args()
    if opts.worker == "memory":
        return memory_worker(opts)

    configs = common.selected_configs(ap, opts, CONFIGS)
    load_before = os.getloadavg()[0]
    pack, backend = setup_host(opts.attention, opts.threads)
    official_cls, official_where = official_class(opts.official_src)
    env = common.environment(
        backend, f"WanTransformer3DMOTModel from {official_where}" if official_cls else f"SKIPPED: {official_where}",
        common.MEMORY_METHOD)
    print(f"torch {env['torch']} | threads {env['threads']} | ComfyUI {env['comfyui']} attention: {backend} | "
          f"official: {env['official']} (SDPA)", flush=True)
    if official_cls is None:
        print(f"NOTE: the official implementation is skipped: {official_where}", flush=True)
    impls = [i for i in IMPLS if i != "official" or official_cls is not None]

    result = {"command": "python bench/bench_wan.py " + " ".join(sys.argv[1:]), "environment": env, "configs": {}}
    with tempfile.TemporaryDirectory(prefix="vap_bench_") as root:
        for name in configs:
            latent = CONFIGS[name]["latent"]
            print(f"\n== {name}: preparing the checkpoint", flush=True)
            info = prepare_checkpoint(pack, name, root)
            cfg = info["config"]
            tokens = latent[0] * (latent[1] // 2) * (latent[2] // 2)
            entry = {"model": {k: v for k, v in cfg.items() if not k.startswith("_")}, "latent": list(latent),
                     "tokens": tokens, "params": info["params"], "expert_params": info["expert_params"],
                     "flops": {k: v for k, v in step_flops(cfg, latent).items() if k in impls or k == "official"},
                     "memory": {}}
            if official_cls is None:
                entry["official_note"] = official_where
            if not opts.no_memory and not opts.sampling_only:
                for impl in impls:
                    print(f"   memory: {impl} (fresh subprocess)", flush=True)
                    entry["memory"][impl] = run_memory(impl, name, info, latent, opts)
                    print(f"     {entry['memory'][impl]}", flush=True)

            inputs = make_inputs(cfg, latent)
            loaded = load_comfy(pack, info)  # base and pack share the base weights, as in a real workflow
            steps = {}
            if not opts.sampling_only:
                steps = {impl: make_step(impl, pack, info, inputs, official_cls, loaded)[0] for impl in impls}
                print(f"   timing: 1 warm-up + {opts.repeats} (fast configs: {opts.fast_repeats}) interleaved repeats "
                      f"of {impls}", flush=True)
                entry["timing"], outs = time_steps(steps, opts.repeats, opts.fast_repeats)
                # agreement of the warm-up outputs: the three ran the same weights on the same inputs
                entry["agreement"] = {"pack_vs_base": (outs["pack"] - outs["base"]).abs().max().item()}
                if "official" in outs:
                    entry["agreement"]["pack_vs_official"] = f"{(outs['pack'] - outs['official']).abs().max().item():.3g}"
                    entry["agreement"]["official_mean_abs"] = f"{outs['official'].abs().mean().item():.3g}"
                print(f"   agreement: {entry['agreement']}", flush=True)
                del outs
                for impl in impls:
                    m = entry["timing"][impl]
                    print(f"     {impl:9s} median {m['median']:.3f}s  min {m['min']:.3f}  max {m['max']:.3f}  "
                          f"(first step {m['first_step']:.3f}s)  {entry['flops'][impl] / 1e9:.1f} GFLOP", flush=True)
                t = entry["timing"]
                print(f"     pack/base {t['pack']['median'] / t['base']['median']:.2f} "
                      f"(FLOP ratio {entry['flops']['pack'] / entry['flops']['base']:.2f})"
                      + (f"  pack/official {t['pack']['median'] / t['official']['median']:.2f}"
                         f"  official/base {t['official']['median'] / t['base']['median']:.2f}"
                         f" (FLOP ratio {entry['flops']['official'] / entry['flops']['base']:.2f})" if "official" in t else ""),
                      flush=True)
                if opts.profile:
                    entry["profile"] = profile_steps(steps)
                    for impl, tables in entry["profile"].items():
                        print(f"\n--- profile {name} {impl}\n{tables['by_op']}", flush=True)
            if opts.sample_steps > 0:
                cheap = entry["timing"]["pack"]["median"] < 5 if "timing" in entry else name == "tiny"
                sample_repeats = opts.sample_repeats or (5 if cheap else 2)
                print(f"   sampling: {opts.sample_steps} euler steps, full vs 0-0.5 vs plain base, "
                      f"{sample_repeats} repeat(s)", flush=True)
                base, expert, _ = loaded
                entry["sampling"] = sampling_active_range(pack, base, expert, cfg, inputs, opts.sample_steps,
                                                          sample_repeats)
                s = entry["sampling"]
                print(f"     full {s['times']['full']['median']:.2f}s  0-0.5 {s['times']['0-0.5']['median']:.2f}s  "
                      f"plain {s['times']['plain base']['median']:.2f}s  diff 0-0.5 vs full max "
                      f"{s['half_vs_full']['max_abs']:.3g} mean {s['half_vs_full']['mean_abs']:.3g}", flush=True)
                print(f"     expert blocks per step: " + "  ".join(
                    f"{m} {s['calls'][m]['expert_blocks']}" for m in s["calls"]) + f"  step s (no step 0): "
                      + "  ".join(f"{k} {v:.3f}" for k, v in step_time_summary(s).items()), flush=True)
            result["configs"][name] = entry
            del steps, loaded
            gc.collect()
    common.finish_environment(env, load_before)
    os.makedirs(opts.out, exist_ok=True)
    stem = "wan_active_range" if opts.sampling_only else "wan_bench"
    with open(os.path.join(opts.out, stem + ".json"), "w") as f:
        json.dump(result, f, indent=1)
    write_markdown(result, os.path.join(opts.out, stem + ".md"))
    print(f"\nwrote {os.path.join(opts.out, stem + '.md')} and {stem}.json", flush=True)
    with open(os.path.join(opts.out, stem + ".md")) as f:
        print(f.read())


if __name__ == "__main__":
    main()
