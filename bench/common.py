"""What the benchmarks share (``bench_wan.py``, ``bench_cog.py``): host set-up, the official code's import path,
interleaved step timing, peak-memory probes in fresh subprocesses, profiler tables, environment facts.

Not a test and not part of the pack: nothing here asserts.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
PACK_DIR = os.path.dirname(BENCH_DIR)
TESTS_DIR = os.path.join(PACK_DIR, "tests")
RESULTS_DIR = os.path.join(BENCH_DIR, "results")
LOADAVG: list[float] = []  # 1-minute load average after every timed step (all benchmarks of this process)


# ------------------------------------------------------------------------------------------- host set-up
def setup_host(attention: str, threads: int | None, attention_users=None):
    """Import ComfyUI (CPU) with the chosen attention backend, then the pack. Returns (pack, backend name).

    ``attention_users(pack)``: the modules (ComfyUI's model, the pack's MoT forward) that must call the same
    ``optimized_attention`` as ``comfy.ldm.modules.attention``; a mismatch stops the run."""
    import torch
    if threads:
        torch.set_num_threads(threads)
    for path in (TESTS_DIR, PACK_DIR):  # the tests' helpers, and the vap_headless package they import
        if path not in sys.path:
            sys.path.insert(0, path)
    import host  # tests/host.py: finds ComfyUI (COMFYUI_PATH or ~/ComfyUI), imports the pack as comfyui_vap
    if host.COMFYUI_PATH is None:
        raise SystemExit(host.HOW_FOUND)
    if host.COMFYUI_PATH not in sys.path:
        sys.path.insert(0, host.COMFYUI_PATH)
    from comfy.cli_args import args
    args.cpu = True
    # what --use-pytorch-cross-attention does; must be set before comfy.model_management / attention import
    args.use_pytorch_cross_attention = attention == "sdpa"
    pack = host.import_host()
    import comfy.ldm.modules.attention as attn
    backend = attn.optimized_attention.__name__
    for module in (attention_users(pack) if attention_users else ()):
        if module.optimized_attention is not attn.optimized_attention:
            raise SystemExit(f"attention backend mismatch: {module.__name__} does not use ComfyUI's optimized_attention")
    if attention == "sdpa" and backend != "attention_pytorch":
        raise SystemExit(f"asked for SDPA but ComfyUI selected {backend}")
    return pack, backend


def official_src_dir(src: str | None, relpath: str):
    """The directory to put on sys.path so that ``relpath`` (a file under ``diffusers/``) of a Video-As-Prompt
    checkout imports, or (None, why)."""
    if not src:
        return None, "VAP_OFFICIAL_SRC / --official-src not set"
    for cand in (os.path.join(src, "diffusers", "src"), os.path.join(src, "src"), src):
        if os.path.isfile(os.path.join(cand, "diffusers", relpath)):
            if cand not in sys.path:
                sys.path.insert(0, cand)
            return cand, ""
    return None, f"{src} holds no diffusers/src/diffusers/{relpath}"


def environment(backend: str, official: str, memory_method: str) -> dict:
    import torch
    try:
        import comfyui_version
        comfy_version = comfyui_version.__version__
    except ImportError:
        comfy_version = "?"
    cpu = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"torch": torch.__version__, "threads": torch.get_num_threads(), "cpu": cpu, "comfyui": comfy_version,
            "python": platform.python_version(), "comfy_attention": backend, "official": official,
            "memory_method": memory_method, "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}


MEMORY_METHOD = ("peak RSS (VmHWM, reset via /proc/self/clear_refs) in a fresh subprocess per implementation "
                 "and config, glibc MALLOC_MMAP_THRESHOLD_=65536; 'peak step' = peak during the 2nd step "
                 "minus RSS after loading; 'first step' = same for the 1st step (pack: builds its "
                 "reference cache where it has one); 'RSS loaded' = weights + runtime, every weight page read "
                 "first (memory-mapped weights count as loaded, not as step memory)")


def environment_lines(env: dict) -> list[str]:
    """The markdown bullet list every results file starts with."""
    return [f"- torch {env['torch']}, {env['threads']} threads, CPU: {env['cpu']}, ComfyUI {env['comfyui']}",
            f"- attention: ComfyUI (base, pack) `{env['comfy_attention']}`"
            f" ({'SDPA, --use-pytorch-cross-attention' if env['comfy_attention'] == 'attention_pytorch' else 'ComfyUI CPU default'});"
            " official: `torch.nn.functional.scaled_dot_product_attention` (hard-wired in its processors)",
            f"- official: {env['official']}",
            f"- load average (1 min) before / during timing (min-max) / after: {env['loadavg_before']:.2f} / "
            f"{env['loadavg_timing'][0]:.2f}-{env['loadavg_timing'][1]:.2f} / {env['loadavg_after']:.2f}"
            " (other processes shared the CPU; timings are interleaved so drift hits every implementation alike)",
            f"- memory: {env['memory_method']}"]


# ------------------------------------------------------------------------------------------------ memory
def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(field)


def _reset_peak():
    with open("/proc/self/clear_refs", "w") as f:  # "5": reset VmHWM (peak RSS) to the current RSS
        f.write("5")


def make_resident(*objects) -> None:
    """Read one byte of every 4 KiB page of every weight of ``objects`` (modules, ModelPatchers, VAPExperts,
    tuples of them; None is skipped). Weights loaded from a memory-mapped safetensors file (the pack's expert)
    only enter RSS when first read: without this the first step would count them as step memory, while the
    official model, which copies its state dict, counts them in 'RSS loaded'."""
    import torch
    seen = set()

    def modules(o):
        if o is None:
            return
        if isinstance(o, (tuple, list)):
            for x in o:
                yield from modules(x)
        elif isinstance(o, torch.nn.Module):
            yield o
        elif hasattr(o, "patcher"):  # VAPExpert
            yield from modules(o.patcher)
        else:  # ModelPatcher
            yield from modules(getattr(o, "model", None))

    total = 0
    for m in modules(objects):
        for t in list(m.parameters()) + list(m.buffers()):
            if t.data_ptr() in seen or t.numel() == 0 or not t.is_contiguous():
                continue
            seen.add(t.data_ptr())
            total += int(t.detach().reshape(-1).view(torch.uint8)[::4096].sum())
    return total


def measure_peak(step, resident=None) -> dict:
    """Peak RSS of two steps, in KiB, for a memory worker (a fresh process: one implementation, one config).
    VmHWM from /proc/self/status, reset through /proc/self/clear_refs right before each step; the parent
    (``run_memory``) sets glibc's MALLOC_MMAP_THRESHOLD_ so that every allocation >= 64 KiB is an mmap and
    freed tensors leave RSS at once (a peak is not hidden by memory kept from an earlier step).
      loaded  RSS after loading the weights and inputs (weights + runtime)
      first   peak RSS during the first step minus ``loaded`` (includes one-time work, e.g. a reference cache)
      steady  peak RSS during the second step minus ``loaded``
    ``resident``: the models, made resident (``make_resident``) before ``loaded`` is read."""
    import torch
    make_resident(resident)
    gc.collect()
    _reset_peak()
    loaded = _status_kib("VmRSS")
    step(0)
    first = _status_kib("VmHWM") - loaded
    gc.collect()
    _reset_peak()
    step(1)
    steady = _status_kib("VmHWM") - loaded
    return {"loaded_kib": loaded, "first_kib": first, "steady_kib": steady, "threads": torch.get_num_threads()}


def run_memory(script: str, impl: str, worker_info: dict, opts) -> dict:
    """Run ``script --worker memory --impl impl`` in a fresh process; its last line ``MEMORY_RESULT {json}``."""
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="65536")
    cmd = [sys.executable, os.path.abspath(script), "--worker", "memory", "--impl", impl, "--attention",
           opts.attention, "--worker-info", json.dumps(worker_info)]
    if opts.official_src:
        cmd += ["--official-src", opts.official_src]
    if opts.threads:
        cmd += ["--threads", str(opts.threads)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    for line in proc.stdout.splitlines():
        if line.startswith("MEMORY_RESULT "):
            return json.loads(line[len("MEMORY_RESULT "):])
    return {"error": (proc.stderr or proc.stdout)[-2000:]}


def print_memory_result(result: dict):
    print("MEMORY_RESULT " + json.dumps(result), flush=True)


# ------------------------------------------------------------------------------------------------ timing
def summarize(values):
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values),
            "all": values}


def rotated(names: list, r: int) -> list:
    """The order of repeat ``r``: ``names`` rotated by r (every implementation leads equally often)."""
    return names[r % len(names):] + names[:r % len(names)]


def time_steps(steps: dict, repeats: int, fast_repeats: int = 0):
    """Round-robin: repeat r runs every implementation once, order rotated by r. One warm-up step each
    (its time is reported as first_step; its outputs are returned for the agreement check). Wall time is
    the measure; process CPU time (all threads) is kept too, being less sensitive to other processes' load."""
    names = list(steps)
    first, outputs = {}, {}
    for n in names:
        t0 = time.perf_counter()
        outputs[n] = steps[n](0).float()
        first[n] = time.perf_counter() - t0
    if max(first.values()) < 5.0:  # cheap configs: more repeats against scheduler noise
        repeats = max(repeats, fast_repeats)
    times = {n: [] for n in names}
    cpu = {n: [] for n in names}
    for r in range(repeats):
        for n in rotated(names, r):
            c0, t0 = time.process_time(), time.perf_counter()
            steps[n](r + 1)
            times[n].append(time.perf_counter() - t0)
            cpu[n].append(time.process_time() - c0)
            LOADAVG.append(os.getloadavg()[0])
    return {n: {**summarize(times[n]), "first_step": first[n], "cpu": summarize(cpu[n])} for n in names}, outputs


def profile_steps(steps: dict, top: int = 25) -> dict:
    """torch.profiler tables (one step each, after warm-up) sorted by self CPU time."""
    from torch.profiler import ProfilerActivity, profile
    out = {}
    for n, step in steps.items():
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            step(99)
        out[n] = {"by_op": prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=top),
                  "by_op_and_shape": prof.key_averages(group_by_input_shape=True).table(
                      sort_by="self_cpu_time_total", row_limit=top)}
    return out


class CallCounter:
    """Counts calls of ``module.name`` (a module-level function the pack's forward looks up at call time, e.g.
    ``wan_mot.joint_block``) while installed; ``with CallCounter(mod, "joint_block") as c: ... c.count``.
    Instrumentation only: the call itself is unchanged."""

    def __init__(self, module, name: str):
        self.module, self.name, self.count = module, name, 0
        self.original = getattr(module, name)

    def __enter__(self):
        original = self.original

        def counted(*args, **kwargs):
            self.count += 1
            return original(*args, **kwargs)
        setattr(self.module, self.name, counted)
        return self

    def __exit__(self, *exc):
        setattr(self.module, self.name, self.original)
        return False


def timed_model_calls(patcher, log: list, counter: CallCounter | None = None):
    """A clone of ``patcher`` whose model calls (one per sampler step and cond batch) append
    {wall, cpu, batch, counted} to ``log`` (``counted``: calls ``counter`` saw during it), through ComfyUI's own
    ``model_function_wrapper`` hook (the sampler then calls ``apply_model`` exactly as without it)."""
    timed = patcher.clone()

    def wrapper(apply_model, args):
        before = counter.count if counter is not None else 0
        c0, t0 = time.process_time(), time.perf_counter()
        out = apply_model(args["input"], args["timestep"], **args["c"])
        log.append({"wall": time.perf_counter() - t0, "cpu": time.process_time() - c0,
                    "batch": int(args["input"].shape[0]),
                    "counted": (counter.count - before) if counter is not None else 0})
        return out
    timed.set_model_unet_function_wrapper(wrapper)
    return timed


# ----------------------------------------------------------------------------------------------- report
def fmt_s(s):
    return f"{s:.3f}" if s < 10 else f"{s:.2f}"


def mib(kib):
    return kib / 1024.0


def memory_columns(mem: dict) -> str:
    if "steady_kib" not in mem:
        return "| | | "
    return f"| {mib(mem['steady_kib']):.0f} | {mib(mem['first_kib']):.0f} | {mib(mem['loaded_kib']):.0f} "


def finish_environment(env: dict, load_before: float):
    env["loadavg_after"] = os.getloadavg()[0]
    env["loadavg_before"] = load_before
    env["loadavg_timing"] = [min(LOADAVG, default=0.0), max(LOADAVG, default=0.0)]


def add_arguments(ap, configs, impls, results_dir: str, results_name: str, extra=None):
    """The options both benchmarks take; ``extra(ap)`` adds a script's own after ``--fast-repeats``."""
    ap.add_argument("--attention", choices=("sdpa", "comfy-default"), default="sdpa",
                    help="ComfyUI's attention: sdpa = --use-pytorch-cross-attention; comfy-default = what ComfyUI "
                         "picks on CPU (sub-quadratic). The official code always uses SDPA.")
    ap.add_argument("--configs", default="tiny,mid", help="comma list of: " + ",".join(configs))
    ap.add_argument("--repeats", type=int, default=3, help="timed steps per implementation (after 1 warm-up)")
    ap.add_argument("--fast-repeats", type=int, default=20,
                    help="repeats used instead when every warm-up step took < 5 s (tiny config)")
    if extra is not None:
        extra(ap)
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    ap.add_argument("--official-src", default=os.environ.get("VAP_OFFICIAL_SRC"),
                    help="Video-As-Prompt checkout (default: $VAP_OFFICIAL_SRC)")
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    ap.add_argument("--profile", action="store_true", help="torch.profiler tables of one step per implementation")
    ap.add_argument("--out", default=results_dir, help=f"where {results_name}.md / {results_name}.json go")
    ap.add_argument("--worker", choices=("memory",), help=argparse.SUPPRESS)
    ap.add_argument("--impl", choices=impls, help=argparse.SUPPRESS)
    ap.add_argument("--worker-info", help=argparse.SUPPRESS)


def selected_configs(ap, opts, configs) -> list[str]:
    chosen = [c.strip() for c in opts.configs.split(",") if c.strip()]
    unknown = [c for c in chosen if c not in configs]
    if unknown:
        ap.error(f"unknown config(s) {unknown}; choose from {list(configs)}")
    return chosen


def convert_checkpoint(pack, sd: dict, cfg: dict, write_official_folder, root: str, name: str, prefix: str = "") -> dict:
    """Write an official-layout state dict as the release's folder and convert it with the pack's converter.
    Returns paths, config and parameter counts (``sd`` is consumed: the caller should drop its reference)."""
    official_dir = os.path.join(root, name, "official")
    write_official_folder(official_dir, sd, cfg)
    n_params = sum(v.numel() for v in sd.values())
    n_expert = sum(v.numel() for k, v in sd.items() if "_mot_ref" in k)
    sd.clear()
    gc.collect()
    paths = {"official": official_dir,
             "official_file": os.path.join(official_dir, "transformer", "diffusion_pytorch_model.safetensors"),
             "base": os.path.join(root, name, f"{prefix}base.safetensors"),
             "expert": os.path.join(root, name, f"{prefix}expert.safetensors")}
    pack.vap_core.convert.convert(official_dir, expert_out=paths["expert"], base_out=paths["base"], quiet=True)
    return {"paths": paths, "config": cfg, "params": n_params, "expert_params": n_expert}
