"""The converter and the expert loader at release size, on a synthetic release that costs no disk.

Writes official releases with the REAL key layout, shapes and config of Video-As-Prompt-Wan2.1-14B (14B base +
5B expert) and Video-As-Prompt-CogVideoX-5B (5B + 5B) as several shards + index.json; each shard is a real
safetensors header followed by a hole (the file is truncated to its full length, so it is sparse: no disk blocks,
no time). Then, each in a fresh subprocess:
- `copy` (floor): read the expert tensors' bytes from the shards and write them to one file, no torch: what
  reading + writing the bytes costs on this machine;
- `convert`: `python -m vap_core.convert SRC --expert OUT [--dtype D]`, the user's command;
- `load`: the pack's expert loader (`vap_core.expert.loading.load_expert`, real ComfyUI host) on that output, then
  every weight read once (as the first sampling step does), next to ComfyUI's own `comfy.utils.load_torch_file`
  on the same file.
Reports wall time, peak RSS (the child's high-water mark VmHWM, polled from /proc) split into anonymous memory (what the process
owns) and file-backed pages (mapped file pages: the kernel drops them when memory is short), and the output size.
Results: bench/results/convert_fullsize.md (+ .json, not committed).

    nice python bench/bench_convert_fullsize.py                        # both releases (~10 min on 2 cores)
    nice python bench/bench_convert_fullsize.py --releases wan14b --dtypes default,fp8_e4m3fn
    nice python bench/bench_convert_fullsize.py --releases wan14b --dtypes fp8_e4m3fn --no-load --base-dtype fp8_e4m3fn
    python bench/bench_convert_fullsize.py --releases tiny-wan,tiny-cog --out /tmp/x.md   # seconds (tests)

Not a test: asserts nothing. Needs free disk for the outputs (~9 GB Wan bf16, ~11 GB Cog bf16); --tmp picks where.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import time

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
PACK_DIR = os.path.dirname(BENCH_DIR)
RESULTS_DIR = os.path.join(BENCH_DIR, "results")
for _p in (PACK_DIR, os.path.join(PACK_DIR, "tests")):
    if _p not in sys.path:
        sys.path.insert(0, _p)

ELEMENT_SIZE = {"BF16": 2, "F16": 2, "F32": 4}
GIB = 1024 ** 3
MIB = 1024 ** 2


# --------------------------------------------------------------------------------------------- releases
def release_configs() -> dict:
    """config.json of each release: the public diffusers configs of the two bases + the MoT's expert blocks
    (Wan: every 4th block, 0..36; CogVideoX: blocks 0..40 of 42, the official recipes' config_ori.json)."""
    from vap_headless.demo import tiny_cog, tiny_wan
    wan = {**tiny_wan.DEFAULT_CONFIG, "num_attention_heads": 40, "attention_head_dim": 128, "in_channels": 36,
           "out_channels": 16, "text_dim": 4096, "freq_dim": 256, "ffn_dim": 13824, "num_layers": 40,
           "image_dim": 1280, "added_kv_proj_dim": 5120, "rope_max_seq_len": 1024,
           "block_idx_with_mot_ref": list(range(0, 40, 4))}
    cog = {**tiny_cog.DEFAULT_CONFIG, "num_attention_heads": 48, "attention_head_dim": 64, "in_channels": 32,
           "out_channels": 16, "time_embed_dim": 512, "text_embed_dim": 4096, "num_layers": 42,
           "sample_width": 90, "sample_height": 60, "sample_frames": 49, "patch_size": 2,
           "max_text_seq_length": 226, "block_idx_with_mot_ref": list(range(41))}
    # tiny twins: the same code path in seconds (tests/test_bench_convert_fullsize.py)
    tiny_w = {**wan, "num_attention_heads": 2, "attention_head_dim": 64, "ffn_dim": 256, "num_layers": 8,
              "text_dim": 64, "image_dim": 32, "added_kv_proj_dim": 128, "block_idx_with_mot_ref": [0, 4]}
    tiny_c = {**cog, "num_attention_heads": 2, "time_embed_dim": 32, "text_embed_dim": 48, "num_layers": 5,
              "sample_width": 8, "sample_height": 6, "sample_frames": 9, "block_idx_with_mot_ref": [0, 1, 2, 3]}
    return {"wan14b": ("wan", wan, 10 * GIB), "cog5b": ("cog", cog, 10 * GIB),
            "tiny-wan": ("wan", tiny_w, 2 * MIB), "tiny-cog": ("cog", tiny_c, 1 * MIB)}


def release_shapes(family: str, config: dict) -> dict[str, tuple]:
    """Official name -> shape, in the order the official model registers its modules (how diffusers shards)."""
    if family == "wan":
        from vap_headless.demo.tiny_wan import official_wan_mot_shapes
        return official_wan_mot_shapes(config)
    from vap_headless.demo.tiny_cog import official_cog_mot_shapes
    return official_cog_mot_shapes(config)


def numel(shape) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def write_sparse_release(root: str, config: dict, shapes: dict, st_dtype: str, shard_bytes: int) -> dict:
    """``root/transformer/``: config.json, shards of at most ``shard_bytes`` (filled in module order, as
    diffusers' save_pretrained does) and the index. Every shard is a header + a hole of the data's length."""
    tdir = os.path.join(root, "transformer")
    os.makedirs(tdir, exist_ok=True)
    with open(os.path.join(tdir, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    shards, current, size = [], [], 0
    for name, shape in shapes.items():
        nbytes = numel(shape) * ELEMENT_SIZE[st_dtype]
        if current and size + nbytes > shard_bytes:
            shards.append(current)
            current, size = [], 0
        current.append((name, shape, nbytes))
        size += nbytes
    shards.append(current)
    weight_map, total, allocated = {}, 0, 0
    for i, shard in enumerate(shards):
        fname = f"diffusion_pytorch_model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        header, offset = {"__metadata__": {"format": "pt"}}, 0
        for name, shape, nbytes in shard:
            header[name] = {"dtype": st_dtype, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
            offset += nbytes
            weight_map[name] = fname
        blob = json.dumps(header, separators=(",", ":")).encode()
        blob += b" " * (-len(blob) % 8)
        path = os.path.join(tdir, fname)
        with open(path, "wb") as f:
            f.write(struct.pack("<Q", len(blob)))
            f.write(blob)
            f.truncate(8 + len(blob) + offset)  # the data: a hole (reads as zeros, no blocks on disk)
        total += offset
        allocated += os.stat(path).st_blocks * 512
    with open(os.path.join(tdir, "diffusion_pytorch_model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f)
    expert_bytes = sum(numel(s) * ELEMENT_SIZE[st_dtype] for n, s in shapes.items() if "_mot_ref" in n)
    return {"shards": len(shards), "tensors": len(shapes), "bytes": total, "allocated_bytes": allocated,
            "expert_tensors": sum(1 for n in shapes if "_mot_ref" in n), "expert_bytes": expert_bytes,
            "expert_params": sum(numel(s) for n, s in shapes.items() if "_mot_ref" in n),
            "params": sum(numel(s) for s in shapes.values())}


# ------------------------------------------------------------------------------------- measured children
def _status(pid: int) -> dict[str, int]:
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key = line.split(":", 1)[0]
                if key in ("VmHWM", "VmRSS", "RssAnon", "RssFile", "RssShmem"):
                    out[key] = int(line.split()[1]) * 1024
    except OSError:
        pass
    return out


def run_measured(cmd: list[str], env: dict | None = None, interval: float = 0.02) -> dict:
    """Run ``cmd``; wall time, its peak RSS (the kernel's high-water mark VmHWM, polled from /proc every
    ``interval`` s: it only grows, so the last poll before exit misses at most ``interval`` of it) and the peaks of
    its anonymous and file-backed RSS (polled), its CPU time (wait4) and its stdout's last JSON line.
    Not ``ru_maxrss``: on Linux a spawned child's ru_maxrss includes the parent's RSS at the spawn."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=PACK_DIR, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peaks: dict[str, int] = {}
    done = threading.Event()

    def poll():
        while not done.is_set():
            for k, v in _status(proc.pid).items():
                peaks[k] = max(peaks.get(k, 0), v)
            done.wait(interval)
    watcher = threading.Thread(target=poll, daemon=True)
    watcher.start()
    out_chunks, err_chunks = [], []
    readers = [threading.Thread(target=lambda s=s, c=c: c.append(s.read()), daemon=True)
               for s, c in ((proc.stdout, out_chunks), (proc.stderr, err_chunks))]
    for r in readers:
        r.start()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    done.set()
    watcher.join()
    for r in readers:
        r.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    stdout, stderr = "".join(out_chunks), "".join(err_chunks)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{stderr[-3000:]}")
    report = {}
    for line in reversed(stdout.strip().splitlines()):
        if line.startswith("{"):
            report = json.loads(line)
            break
    return {"wall_s": wall, "peak_rss": peaks.get("VmHWM", 0), "ru_maxrss": usage.ru_maxrss * 1024, "peak_anon": peaks.get("RssAnon", 0),
            "peak_file": peaks.get("RssFile", 0), "cpu_s": usage.ru_utime + usage.ru_stime, "child": report}


def child_copy(src_root: str, out: str) -> None:
    """The floor: read every expert tensor's bytes (64 MiB chunks) and write them to ``out``. No torch."""
    tdir = os.path.join(src_root, "transformer")
    with open(os.path.join(tdir, "diffusion_pytorch_model.safetensors.index.json")) as f:
        files = sorted(set(json.load(f)["weight_map"].values()))
    chunk = 64 * MIB
    written = 0
    with open(out, "wb") as dst:
        for fname in files:
            with open(os.path.join(tdir, fname), "rb") as src:
                (n,) = struct.unpack("<Q", src.read(8))
                header = json.loads(src.read(n))
                for name, info in header.items():
                    if name == "__metadata__" or "_mot_ref" not in name:
                        continue
                    begin, end = info["data_offsets"]
                    src.seek(8 + n + begin)
                    left = end - begin
                    while left:
                        data = src.read(min(chunk, left))
                        dst.write(data)
                        left -= len(data)
                        written += len(data)
    print(json.dumps({"written": written}))


def _rss_now() -> dict:
    return {k: v for k, v in _status(os.getpid()).items()}


def child_load(path: str, how: str, weight_dtype: str) -> None:
    """Load ``path`` with the pack's loader (``how='pack'``) or with ComfyUI's ``load_torch_file`` ('comfy'),
    then read every weight once. Prints RSS after import / load / first read (anon + file-backed)."""
    import host  # tests/host.py: the real ComfyUI (COMFYUI_PATH or ~/ComfyUI), CPU mode
    import torch
    pack = host.import_host()
    import comfy.utils
    report = {"after_import": _rss_now()}
    t0 = time.perf_counter()
    if how == "pack":
        expert = pack.vap_core.expert.loading.load_expert(path, weight_dtype)
        tensors = list(expert.patcher.model.state_dict().values())
    else:
        sd = comfy.utils.load_torch_file(path)
        tensors = list(sd.values())
    report["load_s"] = time.perf_counter() - t0
    report["after_load"] = _rss_now()
    t0 = time.perf_counter()
    total = 0.0
    with torch.no_grad():
        for t in tensors:  # what moving the weights to the GPU (or a CPU step) reads
            total += float(t.view(torch.uint8).sum()) if t.dtype.itemsize == 1 else float(t.float().sum())
    report["read_s"] = time.perf_counter() - t0
    report["after_read"] = _rss_now()
    report["weight_bytes"] = sum(t.numel() * t.element_size() for t in tensors)
    report["file_bytes"] = os.path.getsize(path)
    print(json.dumps(report))


# ----------------------------------------------------------------------------------------------- driver
def fmt_gib(n: int) -> str:
    return f"{n / GIB:.2f}"


def disk_free(path: str) -> int:
    return shutil.disk_usage(path).free


def bench_release(name: str, opts, rows: list, load_rows: list) -> dict:
    family, config, shard_bytes = release_configs()[name]
    shapes = release_shapes(family, config)
    work = tempfile.mkdtemp(prefix=f"vap_fullsize_{name}_", dir=opts.tmp)
    try:
        t0 = time.perf_counter()
        info = write_sparse_release(os.path.join(work, "release"), config, shapes, opts.source_dtype, shard_bytes)
        info["write_s"] = time.perf_counter() - t0
        print(f"[{name}] synthetic release: {info['tensors']} tensors ({info['expert_tensors']} expert) in "
              f"{info['shards']} shards, {fmt_gib(info['bytes'])} GiB ({info['allocated_bytes'] / MIB:.1f} MiB on "
              f"disk), expert {info['expert_params'] / 1e9:.3f} B params, written in {info['write_s']:.2f} s",
              flush=True)
        need = info["expert_bytes"] * 2 + GIB
        if disk_free(work) < need:
            raise SystemExit(f"{work}: {fmt_gib(disk_free(work))} GiB free, need {fmt_gib(need)} GiB for the outputs; "
                             "pick another --tmp")
        src = os.path.join(work, "release")

        def copy_floor(label):
            floor = os.path.join(work, "copy.bin")
            os.sync()
            r = run_measured([sys.executable, __file__, "--child-copy", src, floor])
            r.update(release=name, what=f"copy (floor, {label})", dtype=opts.source_dtype, out_bytes=os.path.getsize(floor))
            rows.append(r)
            os.remove(floor)
            print(f"[{name}] copy floor {label}: {r['wall_s']:.1f} s, peak RSS {r['peak_rss'] / MIB:.0f} MiB", flush=True)
        copy_floor("before")  # before and after the converter runs: the disk's speed drifts with other users
        for dtype in opts.dtypes:
            out = os.path.join(work, f"expert_{dtype}.safetensors")
            cmd = [sys.executable, "-m", "vap_core.convert", src, "--expert", out, "--quiet"]
            if dtype != "default":
                cmd += ["--dtype", dtype]
            os.sync()
            r = run_measured(cmd)
            r.update(release=name, what="convert", dtype=dtype if dtype != "default" else f"as stored ({opts.source_dtype})",
                     out_bytes=os.path.getsize(out))
            rows.append(r)
            print(f"[{name}] convert {dtype}: {r['wall_s']:.1f} s, peak RSS {r['peak_rss'] / MIB:.0f} MiB "
                  f"(anon {r['peak_anon'] / MIB:.0f}, file {r['peak_file'] / MIB:.0f}), out {fmt_gib(r['out_bytes'])} GiB",
                  flush=True)
            if not opts.no_load:
                loads = [("pack", "default"), ("comfy", "default")]
                if dtype == "default" and "fp8_e4m3fn" in opts.load_dtypes:
                    loads.append(("pack", "fp8_e4m3fn"))
                for how, wd in loads:
                    os.sync()
                    lr = run_measured([sys.executable, __file__, "--child-load", out, how, wd])
                    lr.update(release=name, file_dtype=rows[-1]["dtype"], how=how, weight_dtype=wd)
                    load_rows.append(lr)
                    c = lr["child"]
                    print(f"[{name}] load {how} {wd}: {c['load_s']:.1f} s + read {c['read_s']:.1f} s, peak RSS "
                          f"{lr['peak_rss'] / MIB:.0f} MiB (anon {lr['peak_anon'] / MIB:.0f}, file {lr['peak_file'] / MIB:.0f})",
                          flush=True)
            os.remove(out)
        if opts.base_dtype:
            # the whole release: the expert and the 14B / 5B base in one run (what --base adds: more bytes, same RAM)
            out, base_out = os.path.join(work, "expert_b.safetensors"), os.path.join(work, "base.safetensors")
            need = info["bytes"] + GIB
            if disk_free(work) < need * (0.5 if opts.base_dtype.startswith("fp8") else 1):
                print(f"[{name}] skipping --base: {fmt_gib(disk_free(work))} GiB free", flush=True)
            else:
                cmd = [sys.executable, "-m", "vap_core.convert", src, "--expert", out, "--base", base_out, "--quiet"]
                if opts.base_dtype != "default":
                    cmd += ["--dtype", opts.base_dtype]
                os.sync()
                r = run_measured(cmd)
                r.update(release=name, what="convert --expert --base", dtype=opts.base_dtype,
                         out_bytes=os.path.getsize(out) + os.path.getsize(base_out))
                rows.append(r)
                print(f"[{name}] convert expert + base {opts.base_dtype}: {r['wall_s']:.1f} s, peak RSS "
                      f"{r['peak_rss'] / MIB:.0f} MiB (anon {r['peak_anon'] / MIB:.0f}, file {r['peak_file'] / MIB:.0f}), "
                      f"out {fmt_gib(r['out_bytes'])} GiB", flush=True)
                os.remove(out)
                os.remove(base_out)
        copy_floor("after")
        return info
    finally:
        shutil.rmtree(work, ignore_errors=True)


def runtime_floor() -> dict:
    """RSS of a Python that imported what the converter imports (torch, safetensors): not the data's cost."""
    return run_measured([sys.executable, "-c", "import vap_core.convert"])


def write_results(path: str, infos: dict, rows: list, load_rows: list, floor: dict, opts) -> None:
    import platform
    import torch
    lines = ["# Converter and expert loader at release size (synthetic sparse release)", "",
             f"- {time.strftime('%Y-%m-%d %H:%M %Z')}, Python {platform.python_version()}, torch {torch.__version__}, "
             f"{os.cpu_count()} CPUs, {os.sysconf('SC_PHYS_PAGES') * os.sysconf('SC_PAGE_SIZE') / GIB:.0f} GiB RAM; "
             f"source dtype {opts.source_dtype}; outputs in {opts.tmp or tempfile.gettempdir()}",
             "- command: `python bench/bench_convert_fullsize.py " + " ".join(sys.argv[1:]) + "`",
             f"- runtime floor (`python -c 'import vap_core.convert'`): peak RSS {floor['peak_rss'] / MIB:.0f} MiB",
             "- peak RSS = the child's high-water mark VmHWM; anon / file = peaks of RssAnon / RssFile polled every "
             "20 ms (file = mapped pages of files, which the kernel reclaims under pressure; anon cannot be)", "",
             "## Releases", "",
             "| release | tensors (expert) | shards | params (expert) | bytes | on disk |", "|---|---|---|---|---|---|"]
    for name, i in infos.items():
        lines.append(f"| {name} | {i['tensors']} ({i['expert_tensors']}) | {i['shards']} | {i['params'] / 1e9:.3f} B "
                     f"({i['expert_params'] / 1e9:.3f} B) | {fmt_gib(i['bytes'])} GiB | {i['allocated_bytes'] / MIB:.1f} MiB |")
    lines += ["", "## Conversion to an expert file", "",
              "| release | run | output dtype | wall s | CPU s | vs faster copy | peak RSS MiB | anon MiB | file MiB | output GiB |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    floors = {}  # the faster of the two copy runs of each release
    for r in rows:
        if r["what"].startswith("copy"):
            floors[r["release"]] = min(r["wall_s"], floors.get(r["release"], float("inf")))
    for r in rows:
        ratio = r["wall_s"] / floors[r["release"]] if r["release"] in floors else float("nan")
        lines.append(f"| {r['release']} | {r['what']} | {r['dtype']} | {r['wall_s']:.1f} | {r['cpu_s']:.1f} | "
                     f"{ratio:.2f}x | {r['peak_rss'] / MIB:.0f} | {r['peak_anon'] / MIB:.0f} | "
                     f"{r['peak_file'] / MIB:.0f} | {fmt_gib(r['out_bytes'])} |")
    if load_rows:
        lines += ["", "## Loading the expert file", "",
                  "`pack` = `load_expert(path, weight_dtype)` (the *Load VAP Expert* node), `comfy` = "
                  "`comfy.utils.load_torch_file(path)` alone (ComfyUI's own cost for the same file). RSS columns are "
                  "after the load / after reading every weight once, anon + file-backed MiB.", "",
                  "| release | file dtype | loader | weight_dtype | load s | after load anon+file | read s | "
                  "after read anon+file | peak RSS MiB | peak anon MiB | weights MiB |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in load_rows:
            c = r["child"]
            a, b = c["after_load"], c["after_read"]
            lines.append(f"| {r['release']} | {r['file_dtype']} | {r['how']} | {r['weight_dtype']} | {c['load_s']:.1f} | "
                         f"{a['RssAnon'] / MIB:.0f}+{a['RssFile'] / MIB:.0f} | {c['read_s']:.1f} | "
                         f"{b['RssAnon'] / MIB:.0f}+{b['RssFile'] / MIB:.0f} | {r['peak_rss'] / MIB:.0f} | "
                         f"{r['peak_anon'] / MIB:.0f} | {c['weight_bytes'] / MIB:.0f} |")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(os.path.splitext(path)[0] + ".json", "w") as f:
        json.dump({"releases": infos, "convert": rows, "load": load_rows, "floor": floor}, f, indent=1)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--child-copy":
        child_copy(argv[1], argv[2])
        return 0
    if argv and argv[0] == "--child-load":
        child_load(argv[1], argv[2], argv[3])
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--releases", default="wan14b,cog5b", help="wan14b, cog5b, tiny-wan, tiny-cog (comma list)")
    ap.add_argument("--dtypes", default="default", help="converter --dtype runs: default (as stored), bf16, fp8_e4m3fn")
    ap.add_argument("--load-dtypes", default="default,fp8_e4m3fn", help="loader weight_dtype runs on the as-stored file")
    ap.add_argument("--source-dtype", default="BF16", choices=sorted(ELEMENT_SIZE), help="dtype of the release tensors")
    ap.add_argument("--no-load", action="store_true", help="skip the loader runs")
    ap.add_argument("--base-dtype", default=None,
                    help="also convert expert + base in one run with this --dtype (default, bf16, fp8_e4m3fn)")
    ap.add_argument("--tmp", default=None, help="where the release and outputs go (default: the system temp dir)")
    ap.add_argument("--out", default=os.path.join(RESULTS_DIR, "convert_fullsize.md"))
    opts = ap.parse_args(argv)
    opts.dtypes = [d for d in opts.dtypes.split(",") if d]
    opts.load_dtypes = [d for d in opts.load_dtypes.split(",") if d]
    known = release_configs()
    releases = [r for r in opts.releases.split(",") if r]
    for r in releases:
        if r not in known:
            ap.error(f"unknown release {r}; choose from {', '.join(known)}")
    floor = runtime_floor()
    rows, load_rows, infos = [], [], {}
    for name in releases:
        infos[name] = bench_release(name, opts, rows, load_rows)
    write_results(opts.out, infos, rows, load_rows, floor, opts)
    print(f"wrote {opts.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
