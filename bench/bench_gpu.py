"""Per-step time and peak VRAM at release size on a GPU: ComfyUI's base, the pack (bf16 / fp8 expert, every attention
backend ComfyUI has on the machine) and the official code, interleaved in one run, random weights.

    python bench/bench_gpu.py                              # Wan2.1-14B + expert at 480x832x49, CogVideoX-5B + expert at 480x720x49
    python bench/bench_gpu.py --families wan --repeats 3   # one family (each fits one 10-minute run on an H100)
    python bench/bench_gpu.py --tiny                       # the SAME code path on CPU at tiny size (tests/test_bench_gpu.py)

What runs (one process; every implementation is one row per attention backend):
  base           ComfyUI's native model (``comfy.sd.load_diffusion_model_state_dict``), cond + uncond batched.
  pack           the same base + the expert built by the pack (``build_*_expert``, as ``load_expert`` builds it
                 from a file) in the file's dtype (bf16), ``apply_expert``, the VAP wrapper; cond + uncond batched
                 (ComfyUI's default CFG).
  pack-split     (Wan) the pack with cond and uncond as two batch-1 calls (ComfyUI's CFG when memory is short).
  pack-fp8       the expert stored as fp8 (the loader's ``weight_dtype=fp8_e4m3fn``: weights cast at each layer);
  pack-fp8-fast  ``fp8_e4m3fn_fast`` (fp8 matmul), only where ComfyUI says the device computes in fp8.
  official       ``WanTransformer3DMOTModel`` / ``CogVideoXTransformer3DMOTModel`` from ``VAP_OFFICIAL_SRC`` (a
                 Video-As-Prompt checkout; skipped with the reason when absent), sharing the very same weight
                 tensors as ComfyUI's model and the bf16 expert (parameters assigned, no copy: both fit one GPU),
                 two batch-1 calls for Wan / one batch-2 call for CogVideoX, as the official pipelines call them.
Attention backends: ComfyUI's registered functions among pytorch (SDPA), flash, sage, sage3, xformers, selected per
call through ComfyUI's ``transformer_options["optimized_attention_override"]``; the official code always calls SDPA.
Every row's attention calls are counted (the override must see them). Weights: random, official layout and real
config (``bench_convert_fullsize.release_configs``), made on the device and kept in bf16 (as the release; float32
with ``--tiny``, ComfyUI's CPU compute dtype); the weights are built once and shared by every row.

Timing: one untimed warm-up step per row (the pack fills its per-run reference cache there), then ``--repeats``
rounds, each running every row once in an order rotated per round; ``torch.cuda.synchronize`` around each step.
Memory: on CUDA, ``max_memory_allocated`` during a step minus what was allocated before it (weights of every loaded
row + inputs): "peak step" is the largest over the timed steps, "first step" the warm-up's; "loaded" is what was
allocated before the step. With ``--tiny`` on CPU the same columns come from the process's RSS high-water mark
(VmHWM, reset per step), a rougher measure of the same thing.

Writes ``bench/results/gpu_bench.md`` (+ ``.json``, not committed); ``--tiny`` defaults to a temp folder.
Not a test: asserts nothing; compare ratios within one run.
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import sys
import tempfile
import time

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
PACK_DIR = os.path.dirname(BENCH_DIR)
for _p in (BENCH_DIR, PACK_DIR, os.path.join(PACK_DIR, "tests")):
    if _p not in sys.path:
        sys.path.insert(0, _p)

BACKENDS = ("pytorch", "flash", "sage", "sage3", "xformers")  # ComfyUI's GPU attention functions, in this order
# latent (frames, height, width) of the release sizes: 49 frames -> 13 latent frames, /8 spatially
FULL_LATENT = {"wan": (13, 60, 104), "cog": (13, 60, 90)}   # 480x832x49, 480x720x49


# ------------------------------------------------------------------------------------------------- host
def setup_host(tiny: bool):
    """The real ComfyUI (tests/host.py finds it); CPU mode for --tiny, else ComfyUI's own device choice."""
    import host
    if host.COMFYUI_PATH is None:
        raise SystemExit(f"no ComfyUI host: {host.HOW_FOUND}")
    if host.COMFYUI_PATH not in sys.path:
        sys.path.insert(0, host.COMFYUI_PATH)
    from comfy.cli_args import args
    if tiny:
        args.cpu = True
    import comfy.model_management  # noqa: F401  (after the device choice)
    host._imported = True
    return host.import_pack()


def attention_backends(wanted: str | None) -> list[str]:
    from comfy.ldm.modules import attention
    have = [b for b in BACKENDS if b in attention.REGISTERED_ATTENTION_FUNCTIONS]
    if not wanted:
        return have
    chosen = [b for b in wanted.split(",") if b]
    missing = [b for b in chosen if b not in have]
    if missing:
        raise SystemExit(f"attention backend(s) {missing} are not available here (ComfyUI has {have})")
    return chosen


class AttentionOverride:
    """``transformer_options["optimized_attention_override"]`` running ComfyUI's registered ``name`` backend, and
    counting the calls it sees (proof that a row's attention went through the chosen backend)."""

    def __init__(self, name: str):
        from comfy.ldm.modules import attention
        self.name, self.func, self.calls = name, attention.REGISTERED_ATTENTION_FUNCTIONS[name], 0

    def __call__(self, default_func, *args, **kwargs):
        self.calls += 1
        return self.func(*args, **kwargs)  # kwargs carry _inside_attn_wrapper: no second override


# -------------------------------------------------------------------------------------------- weights
def family_setup(family: str, tiny: bool):
    """(official config, latent, official name -> shape, key module, official class file) of a family."""
    import bench_convert_fullsize as fullsize
    if family == "wan":
        import bench_wan
        from vap_headless.demo.tiny_wan import DEFAULT_CONFIG, official_wan_mot_shapes as shapes_of
        from vap_core.wan import keys
        if tiny:
            cfg, latent = {**DEFAULT_CONFIG, **bench_wan.CONFIGS["tiny"]["model"]}, bench_wan.CONFIGS["tiny"]["latent"]
        else:
            cfg, latent = fullsize.release_configs()["wan14b"][1], FULL_LATENT["wan"]
    else:
        import bench_cog
        from vap_headless.demo.tiny_cog import DEFAULT_CONFIG, official_cog_mot_shapes as shapes_of
        from vap_core.cogvideox import keys
        if tiny:
            f, h, w = bench_cog.CONFIGS["tiny"]["latent"]
            cfg = {**DEFAULT_CONFIG, **bench_cog.RELEASE, **bench_cog.CONFIGS["tiny"]["model"],
                   "sample_frames": (f - 1) * DEFAULT_CONFIG["temporal_compression_ratio"] + 1,
                   "sample_height": h, "sample_width": w}
            latent = (f, h, w)
        else:
            cfg, latent = fullsize.release_configs()["cog5b"][1], FULL_LATENT["cog"]
    return cfg, tuple(latent), shapes_of(cfg), keys


def random_official_state_dict(shapes: dict, family: str, cfg: dict, device, dtype, seed: int = 0) -> dict:
    """Seeded random weights in the official layout, drawn on ``device`` (fast on a GPU) and kept on the CPU in
    ``dtype``; scales as the tiny test models (norms ~1, biases small, matrices 1/sqrt(fan_in))."""
    import torch
    g = torch.Generator(device=device).manual_seed(seed)
    sd = {}
    for name, shape in shapes.items():
        v = torch.randn(shape, generator=g, device=device)
        if name.endswith("pos_embedding"):
            v = v * 0.5
            v[:, :cfg.get("max_text_seq_length", 0)] = 0  # CogVideoX: the text rows of the joint table are zero
        elif ("norm" in name and name.endswith("weight")) and len(shape) == 1:
            v = 1 + 0.1 * v
        elif name.endswith("bias") or len(shape) == 1:
            v = 0.05 * v
        elif "scale_shift_table" in name:
            v = 0.2 * v
        else:
            fan_in = 1
            for s in shape[1:]:
                fan_in *= s
            v = v / fan_in ** 0.5
        sd[name] = v.to("cpu", dtype)
        del v
    return sd


@contextlib.contextmanager
def parameters_on_meta():
    """Build a module without allocating or initialising its parameters (they become meta tensors, replaced by
    ``load_state_dict(assign=True)``); buffers and other tensors the constructor computes stay real."""
    import torch
    register = torch.nn.Module.register_parameter

    def on_meta(module, name, param):
        register(module, name, param)
        if param is not None and param.device.type != "meta":
            module._parameters[name] = torch.nn.Parameter(param.to("meta"), requires_grad=False)
    torch.nn.Module.register_parameter = on_meta
    try:
        yield
    finally:
        torch.nn.Module.register_parameter = register


def official_class(family: str, src: str | None):
    import bench_cog
    import bench_wan
    return (bench_wan if family == "wan" else bench_cog).official_class(src)


def official_sharing(cls, cfg: dict, shared: dict, device):
    """The official model whose parameters ARE ``shared`` (official name -> ComfyUI's Parameter objects)."""
    with parameters_on_meta():
        model = cls(**{k: v for k, v in cfg.items() if not k.startswith("_")})
    model.requires_grad_(False)
    model.load_state_dict(shared, strict=True, assign=True)
    return model.to(device).eval()


# ------------------------------------------------------------------------------------------------ loading
def build_family(pack, family: str, tiny: bool, device, opts) -> dict:
    """ComfyUI's base + the experts (bf16, fp8 ...) + the official model sharing their weights."""
    import torch
    import comfy.model_management as mm
    from vap_core.formats.checkpoint import COG, WAN
    from vap_core.formats.expert_file import expert_metadata
    cfg, latent, shapes, keys = family_setup(family, tiny)
    t0 = time.perf_counter()
    # bf16 as the release; float32 on CPU (--tiny), where ComfyUI computes in float32 and the official model,
    # sharing ComfyUI's weights, must get one dtype throughout
    sd = random_official_state_dict(shapes, family, cfg, device, torch.float32 if tiny else torch.bfloat16)
    base_map, expert_map = keys.split_and_map(sd.keys())
    base_sd = {native: sd[official] for native, official in base_map.items()}
    expert_sd = {native: sd[official] for native, official in expert_map.items()}
    blocks = sorted(cfg["block_idx_with_mot_ref"])
    n_params, n_expert = sum(v.numel() for v in sd.values()), sum(v.numel() for v in expert_sd.values())
    del sd
    el = pack.vap_core.expert.loading
    if family == "wan":
        meta = {"config": json.dumps({"transformer": keys.native_transformer_config(cfg)})}
        import comfy.sd
        base = comfy.sd.load_diffusion_model_state_dict(base_sd, metadata=meta)
        build, variant = pack.vap_core.wan.apply.build_wan_expert, WAN
    else:
        import cog_fixtures
        base = cog_fixtures.load_base_state_dict(base_sd, keys.base_metadata(cfg))
        build, variant = pack.vap_core.cogvideox.apply.build_cog_expert, COG
    del base_sd
    emeta = expert_metadata(variant, blocks, cfg)
    from vap_core.expert.weight_dtype import apply_weight_dtype
    experts = {"pack": build(dict(expert_sd), emeta, source="random")}
    if "fp8" in opts.expert_dtypes:
        experts["pack-fp8"] = apply_weight_dtype(build(dict(expert_sd), emeta, source="random"), "fp8_e4m3fn")
        if mm.supports_fp8_compute(mm.get_torch_device()):
            experts["pack-fp8-fast"] = apply_weight_dtype(build(dict(expert_sd), emeta, source="random"),
                                                          "fp8_e4m3fn_fast")
    del expert_sd
    patchers = {"base": base}
    for name, expert in experts.items():
        patchers[name] = el.apply_expert(base, expert)
    if family == "wan":
        patchers["pack-split"] = patchers["pack"]
    mm.load_models_gpu(list(patchers.values()))
    gc.collect()
    dm = base.model.diffusion_model
    official, why = None, None
    cls, where = official_class(family, opts.official_src)
    if cls is None:
        why = where
    else:
        mine = dict(dm.state_dict(keep_vars=True))
        theirs = dict(experts["pack"].patcher.model.state_dict(keep_vars=True))
        shared = {official: mine[native] for native, official in base_map.items()}
        shared.update({official: theirs[native] for native, official in expert_map.items()})
        official = official_sharing(cls, cfg, shared, mm.get_torch_device())
        where = f"{cls.__name__} from {where}"
    return {"config": cfg, "latent": latent, "patchers": patchers, "experts": experts, "official": official,
            "official_note": why or where, "params": n_params, "expert_params": n_expert,
            "build_s": time.perf_counter() - t0, "dtype": str(base.model.get_dtype()),
            "compute_dtype": str(base.model.manual_cast_dtype or base.model.get_dtype())}


# --------------------------------------------------------------------------------------------------- steps
def compute_dtype(patcher):
    return patcher.model.manual_cast_dtype or patcher.model.get_dtype()


def make_steps(pack, family: str, built: dict, backends: list[str], device) -> dict:
    """{row name: (step(k), prepare(), override or None)}: one denoising step (cond + uncond) per row."""
    cfg, latent = built["config"], built["latent"]
    if family == "wan":
        import bench_wan as fam
        inputs = fam.make_inputs(cfg, latent)
    else:
        import bench_cog as fam
        inputs = fam.make_inputs(cfg, latent)
    dtype = compute_dtype(built["patchers"]["base"])
    inputs = {k: v.to(device, dtype) for k, v in inputs.items()}
    rows = {}
    for backend in backends:
        for impl, patcher in built["patchers"].items():
            rows[f"{impl} [{backend}]"] = comfy_step(pack, family, impl, patcher, inputs, backend, device, fam)
    if built["official"] is not None:
        rows["official [sdpa]"] = official_step(family, built, inputs, device, fam)
    return rows


def comfy_step(pack, family, impl, patcher, inputs, backend, device, fam):
    import torch
    import comfy.model_management as mm
    override = AttentionOverride(backend)
    dm = patcher.model.diffusion_model
    x2 = inputs["x"].repeat(2, 1, 1, 1, 1)
    with_ref = impl != "base"
    if family == "wan":
        wa = pack.vap_core.wan.apply
        clip2 = inputs["clip"].repeat(2, 1, 1)
        ref = {wa.REF_LATENT: inputs["ref_latent"].repeat(2, 1, 1, 1, 1), wa.REF_CONTEXT: inputs["ref_context"],
               wa.REF_CLIP: inputs["ref_clip"].repeat(2, 1, 1)} if with_ref else {}
        extra2 = {"clip_fea": clip2, **ref}
    else:
        ca = pack.vap_core.cogvideox.apply
        ref = {ca.REF_LATENT: inputs["ref_latent"].repeat(2, 1, 1, 1, 1),
               ca.REF_CONTEXT: inputs["ref_context"]} if with_ref else {}
        extra2 = dict(ref)
    uuids = ["bench-cond", "bench-uncond"]  # stable over the run: the pack's reference cache stays valid

    def options(ids):
        return {"wrappers": patcher.wrappers, "uuids": ids, "optimized_attention_override": override}

    if impl == "pack-split":
        def step(k):
            t = torch.full((1,), fam.timestep(k), device=device)
            outs = []
            with torch.inference_mode():
                for b in (0, 1):
                    outs.append(dm(inputs["x"], t, inputs["context"][b:b + 1], transformer_options=options([uuids[b]]),
                                   **{n: v[b:b + 1] for n, v in extra2.items()}))
            return torch.cat(outs)
    else:
        def step(k):
            t = torch.full((2,), fam.timestep(k), device=device)
            with torch.inference_mode():  # ComfyUI executes prompts under inference_mode
                return dm(x2, t, inputs["context"], transformer_options=options(list(uuids)), **extra2)

    def prepare():
        mm.load_models_gpu([patcher])  # what sampling does first; a no-op while everything stays loaded
    return step, prepare, override


def official_step(family, built, inputs, device, fam):
    import torch
    model, cfg = built["official"], built["config"]
    if family == "wan":
        one = torch.ones(1, 1, device=device)  # the pipeline's timestep_list_mot_ref

        def step(k):
            t = torch.full((1,), fam.timestep(k), device=device)
            with torch.no_grad():  # diffusers pipelines run under @torch.no_grad()
                outs = [model(hidden_states=inputs["x"], timestep=t, encoder_hidden_states=inputs["context"][b:b + 1],
                              encoder_hidden_states_image=inputs["clip"], return_dict=False, num_mot_ref=1,
                              hidden_states_mot_ref=inputs["ref_latent"], timestep_list_mot_ref=one,
                              encoder_hidden_states_mot_ref=inputs["ref_context"][b:b + 1],
                              encoder_hidden_states_image_mot_ref=inputs["ref_clip"])[0]
                        for b in (0, 1)]  # cond, then uncond: two calls, as its Wan pipeline
            return torch.cat(outs)
    else:
        x2, ref2 = inputs["x"].repeat(2, 1, 1, 1, 1), inputs["ref_latent"].repeat(2, 1, 1, 1, 1)
        rope, rope_ref = fam.official_rope(cfg, tuple(x2.shape[2:]))
        rope = tuple(r.to(device) for r in rope)
        rope_ref = tuple(r.to(device) for r in rope_ref)
        hidden, hidden_ref = x2.permute(0, 2, 1, 3, 4).contiguous(), ref2.permute(0, 2, 1, 3, 4).contiguous()

        def step(k):
            with torch.no_grad():
                out = model(hidden_states=hidden, encoder_hidden_states=inputs["context"],
                            timestep=torch.full((2,), fam.timestep(k), device=device), image_rotary_emb=rope,
                            return_dict=False, num_mot_ref=1, hidden_states_mot_ref=hidden_ref,
                            encoder_hidden_states_mot_ref=inputs["ref_context"], image_rotary_emb_mot_ref=rope_ref)[0]
            return out.permute(0, 2, 1, 3, 4)  # ComfyUI layout, to compare

    def prepare():
        # the official model borrows ComfyUI's weights (base + bf16 expert): all of them must be on the device
        import comfy.model_management as mm
        mm.load_models_gpu([built["patchers"]["pack"]])
        away = sum(1 for p in model.parameters() if p.device.type != device.type)
        if away:
            raise SystemExit(f"ComfyUI left {away} weight tensors off the {device.type} device (partial load): the "
                             "official row shares them and needs all resident; use a larger GPU or fewer rows "
                             "(--expert-dtypes bf16)")
    return step, prepare, None


# -------------------------------------------------------------------------------------------- measurement
class Meter:
    """Peak memory of one step above what was allocated before it: CUDA allocator stats, or the process RSS
    high-water mark on CPU (--tiny)."""

    def __init__(self, device):
        import torch
        self.cuda = device.type == "cuda"
        self.torch = torch

    def sync(self):
        if self.cuda:
            self.torch.cuda.synchronize()

    def start(self) -> int:
        self.sync()
        if self.cuda:
            self.torch.cuda.reset_peak_memory_stats()
            return self.torch.cuda.memory_allocated()
        import common
        gc.collect()
        common._reset_peak()
        return common._status_kib("VmRSS") * 1024

    def peak(self) -> int:
        self.sync()
        if self.cuda:
            return self.torch.cuda.max_memory_allocated()
        import common
        return common._status_kib("VmHWM") * 1024


def run_rows(rows: dict, meter: Meter, repeats: int) -> tuple[dict, dict]:
    """Warm-up + interleaved rounds (order rotated). Returns (per-row stats, warm-up outputs)."""
    import common
    names = list(rows)
    stats = {n: {"times": [], "peaks": [], "first_step": None, "first_peak": None, "loaded": None} for n in names}
    outs = {}
    for n in names:
        step, prepare, override = rows[n]
        prepare()
        before = meter.start()
        t0 = time.perf_counter()
        out = step(0)
        peak = meter.peak()
        stats[n]["first_step"] = time.perf_counter() - t0
        stats[n]["first_peak"] = peak - before
        outs[n] = out.float().cpu()
        del out
    for r in range(repeats):
        for n in common.rotated(names, r):
            step, prepare, override = rows[n]
            prepare()
            calls_before = override.calls if override else 0
            before = meter.start()
            t0 = time.perf_counter()
            step(r + 1)
            peak = meter.peak()
            stats[n]["times"].append(time.perf_counter() - t0)
            stats[n]["peaks"].append(peak - before)
            stats[n]["loaded"] = before
            if override is not None:
                stats[n]["attention_calls"] = override.calls - calls_before
    for n, s in stats.items():
        s.update(common.summarize(s["times"]))
        s["peak_step"] = max(s["peaks"])
    return stats, outs


def flops_of(family: str, cfg: dict, latent: tuple) -> dict:
    import bench_cog
    import bench_wan
    return (bench_wan if family == "wan" else bench_cog).step_flops(cfg, latent)


def flop_key(row: str) -> str:
    impl = row.split(" ")[0]
    if impl == "pack-split":
        return "pack-split"
    return "pack" if impl.startswith("pack") else impl


# ------------------------------------------------------------------------------------------------ report
def write_markdown(result: dict, path: str):
    import common
    env = result["environment"]
    mem = "peak VRAM" if env["device"].startswith("cuda") else "peak RSS (CPU, --tiny)"
    lines = [f"# VAP at {'tiny size on CPU' if result['tiny'] else 'release size'}: ComfyUI base vs pack vs official", "",
             f"Generated by `{result['command']}` on {env['date']}.", "",
             f"- device: {env['device_name']} ({env['device']}), torch {env['torch']}, ComfyUI {env['comfyui']}",
             f"- weights: random, official layout; stored {env['dtype']}, computed in {env['compute_dtype']}; the official "
             "model shares ComfyUI's weight tensors",
             f"- attention backends: {', '.join(env['backends'])} (ComfyUI's `optimized_attention_override`); official: SDPA",
             f"- memory: {mem}; 'peak step' = largest over the timed steps of (peak during the step - allocated before "
             "it), 'first step' = the warm-up's (the pack builds its reference cache there), 'loaded' = allocated "
             "before a step (every loaded row's weights + inputs)", ""]
    for family, f in result["families"].items():
        lat = f["latent"]
        lines += [f"## {family}: {f['params'] / 1e9:.2f} B params ({f['expert_params'] / 1e9:.2f} B expert), latent "
                  f"{lat[0]}x{lat[1]}x{lat[2]}, built in {f['build_s']:.0f} s; official: {f['official_note']}", "",
                  f"| impl | median s | min-max s | pack/official | impl/base | GFLOP/step | FLOP ratio vs base | "
                  f"{mem} step MiB | first step MiB | loaded MiB | attention calls/step |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        t, fl = f["timing"], f["flops"]
        off = t.get("official [sdpa]")
        for row, s in t.items():
            backend = row.split("[")[1].rstrip("]")
            base = t.get(f"base [{backend}]") or t.get(f"base [{f['backends'][0]}]")
            ratio_off = f"{s['median'] / off['median']:.2f}" if off and row.startswith("pack") else ""
            lines.append(
                f"| {row} | {common.fmt_s(s['median'])} | {common.fmt_s(s['min'])}-{common.fmt_s(s['max'])} | {ratio_off} "
                f"| {s['median'] / base['median']:.2f} | {fl[flop_key(row)] / 1e9:.1f} "
                f"| {fl[flop_key(row)] / fl['base']:.2f} | {s['peak_step'] / 2**20:.0f} | {s['first_peak'] / 2**20:.0f} "
                f"| {s['loaded'] / 2**20:.0f} | {s.get('attention_calls', '')} |")
        if f["official_note"] and off is None:
            lines.append(f"| official | skipped: {f['official_note']} | | | | | | | | | |")
        lines += ["", "| max abs difference of the warm-up outputs | value |", "|---|---|"]
        lines += [f"| {k} | {v:.3g} |" for k, v in f["agreement"].items()]
        lines.append("")
    with open(path, "w") as fh:
        fh.write("\n".join(lines))


# --------------------------------------------------------------------------------------------------- main
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tiny", action="store_true", help="tiny models on CPU (same code path; seconds)")
    ap.add_argument("--families", default="wan,cog", help="wan, cog (comma list)")
    ap.add_argument("--repeats", type=int, default=3, help="timed rounds after the warm-up (default 3)")
    ap.add_argument("--backends", default=None, help=f"attention backends (default: every one of {BACKENDS} here)")
    ap.add_argument("--expert-dtypes", default="bf16,fp8", help="bf16 (always), fp8 (+ fp8-fast where supported)")
    ap.add_argument("--official-src", default=os.environ.get("VAP_OFFICIAL_SRC"),
                    help="Video-As-Prompt checkout (default: $VAP_OFFICIAL_SRC); without it the official row is skipped")
    ap.add_argument("--out", default=None, help="folder for gpu_bench.md/.json (default: bench/results, --tiny: a temp dir)")
    opts = ap.parse_args(argv)
    opts.expert_dtypes = [d for d in opts.expert_dtypes.split(",") if d]
    pack = setup_host(opts.tiny)
    import torch
    import comfy.model_management as mm
    import common
    device = mm.get_torch_device()
    if not opts.tiny and device.type != "cuda":
        raise SystemExit(f"no CUDA device (ComfyUI picked {device}): run with --tiny for the CPU check")
    backends = attention_backends(opts.backends)
    env = common.environment(",".join(backends), "", "")
    env.update(device=str(device), device_name=torch.cuda.get_device_name(device) if device.type == "cuda" else env["cpu"],
               backends=backends)
    result = {"command": "python bench/bench_gpu.py " + " ".join(sys.argv[1:] if argv is None else argv),
              "tiny": opts.tiny, "environment": env, "families": {}}
    meter = Meter(device)
    for family in [f for f in opts.families.split(",") if f]:
        print(f"== {family}: building random weights, ComfyUI's base, the experts, the official model", flush=True)
        built = build_family(pack, family, opts.tiny, device, opts)
        env.update(dtype=built["dtype"], compute_dtype=built["compute_dtype"])
        print(f"   built in {built['build_s']:.1f} s; official: {built['official_note']}", flush=True)
        rows = make_steps(pack, family, built, backends, device)
        print(f"   timing {list(rows)}: 1 warm-up + {opts.repeats} interleaved rounds", flush=True)
        stats, outs = run_rows(rows, meter, opts.repeats)
        for n, s in stats.items():
            print(f"     {n:28s} median {s['median']:.3f}s  peak step {s['peak_step'] / 2**20:.0f} MiB  "
                  f"first {s['first_peak'] / 2**20:.0f} MiB  attention calls {s.get('attention_calls', '-')}", flush=True)
        b0 = backends[0]
        agreement = {f"pack [{b0}] - base [{b0}]": (outs[f"pack [{b0}]"] - outs[f"base [{b0}]"]).abs().max().item()}
        if "official [sdpa]" in outs:
            agreement[f"pack [{b0}] - official"] = (outs[f"pack [{b0}]"] - outs["official [sdpa]"]).abs().max().item()
            agreement["mean abs official"] = outs["official [sdpa]"].abs().mean().item()
        for n in outs:
            if n.startswith("pack") and not n.startswith("pack ["):
                agreement[f"{n} - pack [{n.split('[')[1]}"] = (outs[n] - outs[f"pack [{n.split('[')[1]}"]).abs().max().item()
        result["families"][family] = {
            "config": {k: v for k, v in built["config"].items() if not k.startswith("_")}, "latent": list(built["latent"]),
            "params": built["params"], "expert_params": built["expert_params"], "build_s": built["build_s"],
            "official_note": built["official_note"], "backends": backends,
            "flops": flops_of(family, built["config"], built["latent"]),
            "timing": stats, "agreement": agreement}
        del rows, outs, built
        mm.unload_all_models()
        gc.collect()
        mm.soft_empty_cache()
    out = opts.out or (tempfile.mkdtemp(prefix="vap_gpu_bench_") if opts.tiny else common.RESULTS_DIR)
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "gpu_bench.json"), "w") as fh:
        json.dump(result, fh, indent=1, default=str)
    write_markdown(result, os.path.join(out, "gpu_bench.md"))
    print(f"wrote {os.path.join(out, 'gpu_bench.md')}", flush=True)
    return result


if __name__ == "__main__":
    main()
