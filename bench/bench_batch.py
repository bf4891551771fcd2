#!/usr/bin/env python
"""Rows per minute of the batch runner with 1 and 2 launched servers (``run.py --demo --launch N --csv``).

    python bench/bench_batch.py [--rows 8] [--steps 10] [--repeats 1]

Demo size (tiny random models, 64x48, 9 frames) on CPU servers. Each run is timed from the first row handed to a
server to the runner's exit (server start-up and model writing excluded, reported apart). On a machine with C
cores, N CPU servers share those cores, so the 2-server ratio is bounded by the cores (and by each server already
using several threads); with one GPU per server the model is rows/min(N) = N x rows/min(1) while the rows
outnumber the servers, minus the upload/download time per row.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

BENCH = os.path.dirname(os.path.abspath(__file__))
PACK = os.path.dirname(BENCH)
sys.path[:0] = [PACK]
RESULTS = os.path.join(BENCH, "results", "batch_servers.md")


def make_rows(folder: str, rows: int) -> str:
    from vap_headless.demo import assets
    import csv
    out = assets.write_inputs(os.path.join(folder, "clips"), frames=14)
    video = os.path.join("clips", out["video"])
    path = os.path.join(folder, "rows.csv")
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["video_paths", "ref_video_path", "tar_video_caption", "ref_video_caption"])
        for i in range(rows):
            w.writerow([video, video, f"subject {i} walks", "a square moves right"])
    return path


def run(csv_path: str, servers: int, steps: int, out: str, comfyui: str | None) -> dict:
    cmd = [sys.executable, os.path.join(PACK, "workflows", "run.py"), "--demo", "--launch", str(servers),
           "--csv", csv_path, "--output-dir", out, "--steps", str(steps)]
    if comfyui:
        cmd += ["--comfyui", comfyui]
    started = time.monotonic()
    first_row = None
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    for line in proc.stderr:
        if first_row is None and line.startswith("[batch] row ") and " -> " in line:
            first_row = time.monotonic()
    if proc.wait() != 0:
        raise SystemExit(f"the batch with {servers} server(s) failed (exit {proc.returncode})")
    end = time.monotonic()
    return {"servers": servers, "startup_s": first_row - started, "batch_s": end - first_row}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=8)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--comfyui")
    args = p.parse_args(argv)
    results = []
    with tempfile.TemporaryDirectory(prefix="vap_bench_batch_") as tmp:
        csv_path = make_rows(tmp, args.rows)
        for r in range(args.repeats):
            for servers in (1, 2):  # interleaved, one output folder each (nothing resumed)
                results.append(run(csv_path, servers, args.steps, os.path.join(tmp, f"out_{servers}_{r}"),
                                   args.comfyui))
                print(results[-1], file=sys.stderr)
    best = {n: min(x["batch_s"] for x in results if x["servers"] == n) for n in (1, 2)}
    rpm = {n: 60.0 * args.rows / best[n] for n in best}
    lines = [
        "# Batch runner: rows per minute with 1 and 2 launched servers",
        "",
        f"`python bench/bench_batch.py --rows {args.rows} --steps {args.steps} --repeats {args.repeats}` on this "
        f"machine ({os.cpu_count()} cores), demo size (tiny random models, 64x48, 9 frames), CPU servers. Timed "
        "from the first row handed out to the end; best of the repeats.",
        "",
        "| servers | rows/min | vs 1 server | start-up s (excluded) |",
        "|---|---|---|---|",
    ]
    for n in (1, 2):
        startup = min(x["startup_s"] for x in results if x["servers"] == n)
        lines.append(f"| {n} | {rpm[n]:.1f} | {rpm[n] / rpm[1]:.2f} | {startup:.1f} |")
    lines += ["", f"{os.cpu_count()} cores shared by every server: the 2-server ratio is bounded by the cores "
              "(`--launch N` gives each CPU server cores/N threads; without that their thread pools fought: 0.12x). With one GPU per server, rows/min(N) ~ N x "
              "rows/min(1) while there are at least N rows left, less each row's upload/download."]
    os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
    with open(RESULTS, "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
