"""Speed and memory of the pack's CogVideoX VAP model next to ComfyUI's plain CogVideoX and the official code.

    python bench/bench_cog.py [--attention sdpa|comfy-default] [--configs tiny,mid] [--repeats N]

Implementations, all float32 on CPU with IDENTICAL random weights (one official-layout state dict from
``tests/cog_fixtures.official_cog_mot_state_dict``: learned positional table + RoPE, as CogVideoX-5b-I2V):
  base      ComfyUI's native ``comfy.ldm.cogvideo.model.CogVideoXTransformer3DModel`` alone (the converted base,
            no reference), loaded like the tests do (``cog_fixtures.load_base``: ComfyUI's loader, the learned
            table put back afterwards because ComfyUI cannot hold it at a non-default sample size).
  pack      the same base + the converted expert (pack loader), ``apply_expert``, the native forward with the VAP
            wrapper and the reference in the conds' place (``vap_ref_latent`` / ``vap_ref_context`` kwargs).
  pack-off  the same pack model on a step OUTSIDE its active range (``apply_expert(start=0, end=0.5)``, the
            step placed at the end of a schedule through ``transformer_options`` as ComfyUI's sampler does): the
            pack then runs the official base alone (its RoPE), which must cost what ``base`` costs.
  official  ``CogVideoXTransformer3DMOTModel`` of the official fork (``VAP_OFFICIAL_SRC`` / ``--official-src``),
            strict ``load_state_dict``, RoPE tables computed once per run as its pipeline does.
One denoising step = cond + uncond the way each implementation does CFG: here all of them make ONE batch-2 call
(ComfyUI batches cond and uncond; the official CogVideoX pipeline concatenates them too).

Timing, memory, FLOP accounting and the report work as in ``bench_wan.py`` (shared code: ``common.py``).
Writes ``bench/results/cog_bench.md`` (the tables) and ``bench/results/cog_bench.json`` (everything).
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

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
from common import RESULTS_DIR, fmt_s, profile_steps, time_steps  # noqa: E402

IMPLS = ("base", "pack", "pack-off", "official")
OFFICIAL_FILE = os.path.join("models", "transformers", "cogvideox_transformer_3d_mot.py")

# Model sizes. Head dim 64 (CogVideoX's; ComfyUI 0.25's detection assumes it), FFN 4 x dim (fixed in both
# codes), text_embed_dim 4096 (T5-XXL), time_embed_dim 512 and 32 input channels (I2V) as the release, 226 text
# tokens per stream. The learned positional table covers exactly the benchmarked latent (sample size = latent
# size), as the official model requires.
#   tiny: dim 128, 4 layers, expert on block 0, latent 2 x 16 x 16 -> 128 video tokens (overhead-dominated).
#   mid:  dim 1024 (16 heads x 64), 8 layers, experts on blocks 0 and 4 (every 4th), latent 4 x 64 x 64 ->
#         4096 video tokens + 226 text per stream; in expert blocks the joint attention spans
#         2 x (226 + 4096) = 8644 tokens (compute-dominated).
CONFIGS = {
    "tiny": {"model": {"num_attention_heads": 2, "attention_head_dim": 64, "num_layers": 4,
                       "block_idx_with_mot_ref": [0]},
             "latent": (2, 16, 16)},
    "mid": {"model": {"num_attention_heads": 16, "attention_head_dim": 64, "num_layers": 8,
                      "block_idx_with_mot_ref": [0, 4]},
            "latent": (4, 64, 64)},
}
RELEASE = {"text_embed_dim": 4096, "time_embed_dim": 512, "in_channels": 32, "out_channels": 16}


# ----------------------------------------------------------------------------------------------- FLOPs
def flops_per_sample(cfg: dict, latent: tuple, vap: bool, pack: bool = False, num_refs: int = 1) -> float:
    """Matmul + attention FLOPs of one forward of ONE sample (a multiply-add = 2 FLOPs).

    C = heads * head_dim, E = time_embed_dim, T = text tokens (226), D_t = text_embed_dim, P = patch^2,
    L = video tokens = F * H/p * W/p, n = references, mm(m, k, n) = 2 m k n; norms, RoPE, modulation
    elementwise work and GELU are left out.

      embeddings(v, t) = mm(v, C_in P, C) + mm(t, D_t, C) + mm(1, C, E) + mm(1, E, E)     patch, text, time
      block(s, m)      = 2 mm(1, E, 6C) + 4 mm(s, C, C) + 4 s m C + 2 mm(s, C, 4C)
                         (norm1/norm2 modulation, q k v o of s tokens, QK^T and AV of s queries over m keys, FFN)
      head             = mm(1, E, 2C) + mm(L, C, P C_out)

      base = embeddings(L, T) + N_layers block(T + L, T + L) + head
      VAP  = base + embeddings(nL, nT)                                   the reference (every call)
                  + sum over expert blocks [block(S, S + S_r) - block(S, S) + block(S_r, S + S_r)]
             with S = T + L, S_r = n (T + L): target and reference share one joint attention.
      pack = VAP, except that in the last expert block the reference only lends its keys and values (nothing
             reads its output: only the target is decoded): block(S_r, S + S_r) there shrinks to
             mm(1, E, 6C) + 2 mm(S_r, C, C) (its modulation, k and v). Nothing is cached across calls."""
    c = cfg["num_attention_heads"] * cfg["attention_head_dim"]
    e, p = cfg["time_embed_dim"], cfg["patch_size"]
    t = cfg["max_text_seq_length"]
    lf, lh, lw = latent
    n_tok = lf * (lh // p) * (lw // p)

    def mm(m, k, n):
        return 2.0 * m * k * n

    def embeddings(v, txt):
        return mm(v, cfg["in_channels"] * p * p, c) + mm(txt, cfg["text_embed_dim"], c) + mm(1, c, e) + mm(1, e, e)

    def block(s, m):
        return 2 * mm(1, e, 6 * c) + 4 * mm(s, c, c) + 4.0 * s * m * c + 2 * mm(s, c, 4 * c)

    s = t + n_tok
    total = embeddings(n_tok, t) + cfg["num_layers"] * block(s, s) + mm(1, e, 2 * c) + mm(n_tok, c, p * p * cfg["out_channels"])
    if vap:
        s_r = num_refs * s
        total += embeddings(num_refs * n_tok, num_refs * t)
        experts = cfg["block_idx_with_mot_ref"]
        for j in range(len(experts)):
            total += block(s, s + s_r) - block(s, s)
            if pack and j == len(experts) - 1:
                total += mm(1, e, 6 * c) + 2 * mm(s_r, c, c)
            else:
                total += block(s_r, s + s_r)
    return total


def step_flops(cfg, latent):
    """FLOPs of one denoising step (cond + uncond = 2 samples) per implementation."""
    base = 2 * flops_per_sample(cfg, latent, vap=False)
    return {"base": base, "pack": 2 * flops_per_sample(cfg, latent, vap=True, pack=True), "pack-off": base,
            "official": 2 * flops_per_sample(cfg, latent, vap=True)}


# ------------------------------------------------------------------------------------------- host set-up
def setup_host(attention: str, threads: int | None):
    def users(pack):
        import comfy.ldm.cogvideo.model as cog_model
        return (cog_model, pack.vap_core.cogvideox.mot)
    return common.setup_host(attention, threads, users)


def official_class(src: str | None):
    """CogVideoXTransformer3DMOTModel from a Video-As-Prompt checkout (or its diffusers/src), or (None, why)."""
    cand, why = common.official_src_dir(src, OFFICIAL_FILE)
    if cand is None:
        return None, why
    try:
        from diffusers.models.transformers.cogvideox_transformer_3d_mot import CogVideoXTransformer3DMOTModel
    except ImportError as e:
        return None, f"importing the official model from {cand} failed: {e!r} (install diffusers' deps)"
    return CogVideoXTransformer3DMOTModel, cand


# ---------------------------------------------------------------------------------------- model loading
def model_config(name: str) -> dict:
    import cog_fixtures  # tests/, on sys.path after setup_host
    frames, height, width = CONFIGS[name]["latent"]
    return {**cog_fixtures.DEFAULT_CONFIG, **RELEASE, **CONFIGS[name]["model"],
            "sample_frames": (frames - 1) * cog_fixtures.DEFAULT_CONFIG["temporal_compression_ratio"] + 1,
            "sample_height": height, "sample_width": width}


def prepare_checkpoint(pack, name: str, root: str) -> dict:
    """Official-layout random checkpoint on disk + the pack's conversion of it. Returns paths and config."""
    import cog_fixtures
    cfg = model_config(name)
    sd, cfg = cog_fixtures.official_cog_mot_state_dict(cfg, seed=0)
    return common.convert_checkpoint(pack, sd, cfg, cog_fixtures.write_official_folder, root, name, "cog_")


def make_inputs(cfg: dict, latent: tuple, seed: int = 1):
    """One CFG pair in ComfyUI's layout: the same noisy latent + image latents for cond and uncond, one reference
    (video latents + its first-frame image latents), different T5 states for target and reference captions."""
    import torch
    g = torch.Generator().manual_seed(seed)
    f, h, w = latent
    c, t, d = cfg["in_channels"], cfg["max_text_seq_length"], cfg["text_embed_dim"]
    return {"x": torch.randn(1, c, f, h, w, generator=g),
            "ref_latent": torch.randn(1, c, f, h, w, generator=g),
            "context": torch.randn(2, t, d, generator=g),       # [cond, uncond]
            "ref_context": torch.randn(2, t, d, generator=g)}   # [cond, uncond]


def timestep(k: int) -> float:
    """Timestep (0..1000) of step k of a made-up schedule: the cost does not depend on it."""
    return 999.0 - 37.0 * (k % 25)


def load_comfy(pack, info, with_expert=True):
    """ComfyUI's loader for the base (``cog_fixtures.load_base``), the pack's for the expert, then
    load_models_gpu as sampling does. Returns (base, expert, full-range patcher, 0-0.5 patcher)."""
    import comfy.model_management
    import cog_fixtures
    base = cog_fixtures.load_base(info["paths"]["base"])
    if not with_expert:
        comfy.model_management.load_models_gpu([base])
        return base, None, None, None
    el = pack.vap_core.expert.loading
    expert = el.load_expert(info["paths"]["expert"])
    patched = el.apply_expert(base, expert)
    half = el.apply_expert(base, expert, start=0.0, end=0.5)
    comfy.model_management.load_models_gpu([patched])
    return base, expert, patched, half


def official_rope(cfg: dict, latent: tuple, num_refs: int = 1):
    """(target, reference) RoPE tables as the official pipeline builds them (once per run), from the official
    ``get_3d_rotary_pos_embed``; the crop region is the pipeline's ``get_resize_crop_region_for_grid`` (copied:
    importing the pipeline module pulls in transformers)."""
    from diffusers.models.embeddings import get_3d_rotary_pos_embed
    p = cfg["patch_size"]
    frames, h, w = latent
    grid_h, grid_w = h // p, w // p
    base_w, base_h = cfg["sample_width"] // p, cfg["sample_height"] // p
    if grid_h / grid_w > base_h / base_w:
        rh, rw = base_h, int(round(base_h / grid_h * grid_w))
    else:
        rw, rh = base_w, int(round(base_w / grid_w * grid_h))
    top, left = int(round((base_h - rh) / 2.0)), int(round((base_w - rw) / 2.0))
    crops = ((top, left), (top + rh, left + rw))
    kw = dict(embed_dim=cfg["attention_head_dim"], crops_coords=crops, grid_size=(grid_h, grid_w), temporal_size=frames)
    return get_3d_rotary_pos_embed(**kw), get_3d_rotary_pos_embed(**kw, mot_num=num_refs)


def make_step(impl: str, pack, info, inputs, official_cls=None, loaded=None):
    """A function step(k) running one denoising step (cond + uncond, batch 2) of ``impl``; returns its output."""
    import torch
    cfg = info["config"]
    x2 = inputs["x"].repeat(2, 1, 1, 1, 1)
    ref2 = inputs["ref_latent"].repeat(2, 1, 1, 1, 1)
    if impl == "official":
        from safetensors.torch import load_file
        model = official_cls(**{k: v for k, v in cfg.items() if not k.startswith("_")})
        model.load_state_dict(load_file(info["paths"]["official_file"]), strict=True)
        model.eval()
        rope, rope_ref = official_rope(cfg, tuple(x2.shape[2:]))
        hidden, hidden_ref = x2.permute(0, 2, 1, 3, 4).contiguous(), ref2.permute(0, 2, 1, 3, 4).contiguous()

        def step(k):
            with torch.no_grad():  # diffusers pipelines run under @torch.no_grad()
                out = model(hidden_states=hidden, encoder_hidden_states=inputs["context"],
                            timestep=torch.full((2,), timestep(k)), image_rotary_emb=rope, return_dict=False,
                            num_mot_ref=1, hidden_states_mot_ref=hidden_ref,
                            encoder_hidden_states_mot_ref=inputs["ref_context"], image_rotary_emb_mot_ref=rope_ref)[0]
            return out.permute(0, 2, 1, 3, 4)  # ComfyUI layout, to compare
        return step, model

    base, expert, patched, half = loaded if loaded is not None else load_comfy(pack, info, with_expert=impl != "base")
    ca = pack.vap_core.cogvideox.apply
    patcher = {"base": base, "pack": patched, "pack-off": half}[impl]
    extra = {} if impl == "base" else {ca.REF_LATENT: ref2, ca.REF_CONTEXT: inputs["ref_context"]}
    dm = patcher.model.diffusion_model

    def options(k):
        o = {"wrappers": patcher.wrappers, "uuids": ["bench-cond", "bench-uncond"]}
        if impl == "pack-off":
            # what ComfyUI's sampler puts there: the run's sigmas and the current one; the last step of 4
            # (schedule fraction 1.0) lies outside start=0 .. end=0.5
            sigmas = torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0])
            o.update(sample_sigmas=sigmas, sigmas=sigmas[3:4].repeat(2))
        return o

    def step(k):
        t = torch.full((2,), timestep(k))
        with torch.inference_mode():  # ComfyUI executes prompts under inference_mode
            return dm(x2, t, inputs["context"], transformer_options=options(k), **extra)
    return step, (base, expert, patched, half)


# ------------------------------------------------------------------------------------------------ memory
def memory_worker(opts):
    pack, backend = setup_host(opts.attention, opts.threads)
    info = json.loads(opts.worker_info)
    official_cls = None
    if opts.impl == "official":
        official_cls, _ = official_class(opts.official_src)
    inputs = make_inputs(info["config"], tuple(info["latent"]))
    step, models = make_step(opts.impl, pack, info, inputs, official_cls)
    common.print_memory_result({**common.measure_peak(step, resident=models), "backend": backend})


def run_memory(impl, info, latent, opts):
    worker_info = {"paths": info["paths"], "config": info["config"], "latent": list(latent)}
    return common.run_memory(__file__, impl, worker_info, opts)


# ----------------------------------------------------------------------------------------------- report
def write_markdown(result: dict, path: str):
    env = result["environment"]
    lines = ["# CogVideoX VAP: pack vs official vs ComfyUI base (CPU, float32)", "",
             f"Generated by `{result['command']}` on {env['date']}.", ""] + common.environment_lines(env) + [
             "- positions: every model has the learned positional table + RoPE of CogVideoX-5b-I2V; the base is "
             "loaded as `tests/cog_fixtures.load_base` does (ComfyUI 0.25 cannot hold a learned table at a "
             "non-default sample size; loaded without it, its detection switches ComfyUI's own RoPE on, and the "
             "table is put back), so `base` runs learned table + ComfyUI's RoPE: the same work as the official "
             "base, positions as ComfyUI computes them", ""]
    lines += ["## Per denoising step (cond + uncond, one batch-2 call in every implementation)", "",
              "| config | impl | tokens tgt+ref (text+video each) | median s | min-max s | CPU s | pack/official "
              "| impl/base | GFLOP/step | FLOP ratio vs base | peak step RSS MiB | first step MiB | RSS loaded MiB |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, c in result["configs"].items():
        t = c["timing"]
        text, vid = c["text_tokens"], c["tokens"]
        for impl in IMPLS:
            if impl not in t:
                lines.append(f"| {name} | {impl} | | skipped: {c.get('official_note', '')} | | | | | | | | | |")
                continue
            m = t[impl]
            ratio_off = f"{m['median'] / t['official']['median']:.2f}" if impl == "pack" and "official" in t else ""
            tokens = f"{text}+{vid}" if impl in ("base", "pack-off") else f"{text}+{vid} + {text}+{vid}"
            lines.append(f"| {name} | {impl} | {tokens} | {fmt_s(m['median'])} | {fmt_s(m['min'])}-{fmt_s(m['max'])} "
                         f"| {fmt_s(m['cpu']['median'])} | {ratio_off} | {m['median'] / t['base']['median']:.2f} "
                         f"| {c['flops'][impl] / 1e9:.1f} | {c['flops'][impl] / c['flops']['base']:.2f} "
                         f"{common.memory_columns(c['memory'].get(impl, {}))}|")
    lines += ["", "## Numerical agreement at one step (same weights, same inputs)", "",
              "| config | max abs pack - official | mean abs official output | max abs pack-off - base | max abs pack - base |",
              "|---|---|---|---|---|"]
    for name, c in result["configs"].items():
        a = c["agreement"]
        lines.append(f"| {name} | {a.get('pack_vs_official', 'n/a')} | {a.get('official_mean_abs', 'n/a')} "
                     f"| {a['pack_off_vs_base']:.3g} | {a['pack_vs_base']:.3g} |")
    lines += ["", "`pack-off - base` is not 0: outside its range the pack runs the official base (pipeline RoPE "
              "positions), the base ComfyUI's RoPE positions (docs/COGVIDEOX.md, 2).", "",
              "Columns: see `bench/README.md`. Random weights: output differences show the mechanism only.", ""]
    with open(path, "w") as f:
        f.write("\n".join(lines))


# ------------------------------------------------------------------------------------------------- main
def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    common.add_arguments(ap, CONFIGS, IMPLS, RESULTS_DIR, "cog_bench")
    opts = ap.parse_args()
    if opts.worker == "memory":
        return memory_worker(opts)

    configs = common.selected_configs(ap, opts, CONFIGS)
    load_before = os.getloadavg()[0]
    pack, backend = setup_host(opts.attention, opts.threads)
    official_cls, official_where = official_class(opts.official_src)
    env = common.environment(
        backend, (f"CogVideoXTransformer3DMOTModel from {official_where}" if official_cls
                  else f"SKIPPED: {official_where}"), common.MEMORY_METHOD)
    print(f"torch {env['torch']} | threads {env['threads']} | ComfyUI {env['comfyui']} attention: {backend} | "
          f"official: {env['official']} (SDPA)", flush=True)
    if official_cls is None:
        print(f"NOTE: the official implementation is skipped: {official_where}", flush=True)
    impls = [i for i in IMPLS if i != "official" or official_cls is not None]

    result = {"command": "python bench/bench_cog.py " + " ".join(sys.argv[1:]), "environment": env, "configs": {}}
    with tempfile.TemporaryDirectory(prefix="vap_bench_cog_") as root:
        for name in configs:
            latent = CONFIGS[name]["latent"]
            print(f"\n== {name}: preparing the checkpoint", flush=True)
            info = prepare_checkpoint(pack, name, root)
            cfg = info["config"]
            p = cfg["patch_size"]
            entry = {"model": {k: v for k, v in cfg.items() if not k.startswith("_")}, "latent": list(latent),
                     "tokens": math.prod((latent[0], latent[1] // p, latent[2] // p)),
                     "text_tokens": cfg["max_text_seq_length"], "params": info["params"],
                     "expert_params": info["expert_params"], "flops": step_flops(cfg, latent), "memory": {}}
            if official_cls is None:
                entry["official_note"] = official_where
            if not opts.no_memory:
                for impl in impls:
                    print(f"   memory: {impl} (fresh subprocess)", flush=True)
                    entry["memory"][impl] = run_memory(impl, info, latent, opts)
                    print(f"     {entry['memory'][impl]}", flush=True)

            inputs = make_inputs(cfg, latent)
            loaded = load_comfy(pack, info)  # base and pack share the base weights, as in a real workflow
            steps = {impl: make_step(impl, pack, info, inputs, official_cls, loaded)[0] for impl in impls}
            print(f"   timing: 1 warm-up + {opts.repeats} (fast configs: {opts.fast_repeats}) interleaved repeats "
                  f"of {impls}", flush=True)
            entry["timing"], outs = time_steps(steps, opts.repeats, opts.fast_repeats)
            entry["agreement"] = {"pack_vs_base": (outs["pack"] - outs["base"]).abs().max().item(),
                                  "pack_off_vs_base": (outs["pack-off"] - outs["base"]).abs().max().item()}
            if "official" in outs:
                entry["agreement"]["pack_vs_official"] = f"{(outs['pack'] - outs['official']).abs().max().item():.3g}"
                entry["agreement"]["official_mean_abs"] = f"{outs['official'].abs().mean().item():.3g}"
            print(f"   agreement: {entry['agreement']}", flush=True)
            del outs
            t = entry["timing"]
            for impl in impls:
                m = t[impl]
                print(f"     {impl:9s} median {m['median']:.3f}s  min {m['min']:.3f}  max {m['max']:.3f}  "
                      f"(first step {m['first_step']:.3f}s)  {entry['flops'][impl] / 1e9:.1f} GFLOP", flush=True)
            print(f"     pack/base {t['pack']['median'] / t['base']['median']:.2f} "
                  f"(FLOP ratio {entry['flops']['pack'] / entry['flops']['base']:.2f})  "
                  f"pack-off/base {t['pack-off']['median'] / t['base']['median']:.2f}"
                  + (f"  pack/official {t['pack']['median'] / t['official']['median']:.2f}" if "official" in t else ""),
                  flush=True)
            if opts.profile:
                entry["profile"] = profile_steps(steps)
                for impl, tables in entry["profile"].items():
                    print(f"\n--- profile {name} {impl}\n{tables['by_op']}", flush=True)
            result["configs"][name] = entry
            del steps, loaded
            gc.collect()
    common.finish_environment(env, load_before)
    os.makedirs(opts.out, exist_ok=True)
    with open(os.path.join(opts.out, "cog_bench.json"), "w") as f:
        json.dump(result, f, indent=1)
    write_markdown(result, os.path.join(opts.out, "cog_bench.md"))
    print(f"\nwrote {os.path.join(opts.out, 'cog_bench.md')} and cog_bench.json", flush=True)
    with open(os.path.join(opts.out, "cog_bench.md")) as f:
        print(f.read())


if __name__ == "__main__":
    main()
