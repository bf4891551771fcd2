#!/usr/bin/env python
"""Run a shipped VAP workflow headless through ComfyUI's real executor and write the video.

    python workflows/run.py --demo
        tiny random models + a tiny image and reference clip in a temp folder, the same graph at 64x48,
        9 frames: proves the whole pipeline runs on this machine (CPU is fine). The video is NOISE.

    python workflows/run.py --image me.png --reference-video effect.mp4 \\
        --prompt "what the new video shows" --reference-prompt "what the reference video shows" \\
        --output out.mp4
        the official settings (workflows/api/wan_vap_official.api.json) with your inputs; needs the real
        models in ComfyUI/models (see workflows/README.md).

By default a private ComfyUI server is started on a free 127.0.0.1 port from the ComfyUI checkout
(--comfyui, COMFYUI_PATH, the ComfyUI holding this pack in custom_nodes/, or ~/ComfyUI) with its own
temporary input/output folders; --server HOST:PORT uses a server that is already running instead
(inputs are uploaded, the result is downloaded). Run it with the Python that runs ComfyUI.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
import threading
import time

from . import client as ch

PACK_DIR = ch.PACK_DIR

TITLE_PROMPT, TITLE_NEGATIVE = "Prompt", "Negative prompt"
TITLE_REF_PROMPT, TITLE_REF_NEGATIVE = "Reference caption", "Reference negative prompt"


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python workflows/run.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--demo", action="store_true",
                   help="tiny random models and inputs in a temp folder; output is noise (a smoke test)")
    p.add_argument("--workflow", default="wan_vap_official",
                   help="shipped workflow name (wan_vap_official, wan_vap_lora_upscale, cog_vap_official, "
                        "wan_vap_long_video) or an "
                        "API-format .json")
    p.add_argument("--image", help="start image (first frame of the new video)")
    p.add_argument("--reference-video", help="reference video whose effect/motion/style is transferred")
    p.add_argument("--prompt", help="describes the video to generate")
    p.add_argument("--reference-prompt", help="describes the reference video (its caption)")
    p.add_argument("--negative-prompt", help="negative prompt for both branches (default: the official one)")
    p.add_argument("--seed", type=int, help="sampler seed (default: the workflow's, 42)")
    p.add_argument("--steps", type=int, help="sampler steps (default: the workflow's)")
    p.add_argument("--output", help="mp4 to write (default: vap_output.mp4, or vap_demo_noise.mp4 with --demo)")
    p.add_argument("--comfyui", help="ComfyUI checkout to start (default: COMFYUI_PATH, custom_nodes parent, ~/ComfyUI)")
    p.add_argument("--server", action="append", metavar="HOST:PORT",
                   help="use a running ComfyUI instead of starting one; repeat it to spread a --csv batch over servers")
    p.add_argument("--launch", type=int, metavar="N",
                   help="start N private servers (a --csv batch spreads its rows over them; default 1)")
    p.add_argument("--gpus", metavar="LIST", help="with --launch: one CUDA device per server, e.g. 0,1")
    p.add_argument("--cpu", action="store_true", help="start ComfyUI with --cpu (implied by --demo)")
    p.add_argument("--comfy-arg", action="append", default=[], metavar="ARG",
                   help="extra argument for ComfyUI's main.py, repeatable (e.g. --comfy-arg=--lowvram)")
    p.add_argument("--timeout", type=float, default=24 * 3600, help="seconds to wait for the result (of each row)")
    b = p.add_argument_group("batch mode (a VAP-Data benchmark.csv; docs/HEADLESS.md)")
    b.add_argument("--csv", help="run every row of this CSV (columns video_paths, ref_video_path, tar_video_caption, "
                                 "ref_video_caption; CogVideoX also ref_video_path_2/_3 + ref_video_caption_2/_3)")
    b.add_argument("--data-dir", help="folder the CSV's video paths are relative to (default: the CSV's folder)")
    b.add_argument("--output-dir", help="where the row videos and the summary go (default: vap_batch_output)")
    b.add_argument("--side-by-side", action="store_true",
                   help="also write [reference | target | generated] per row, as the official bench scripts do")
    p.add_argument("--keep-temp", action="store_true", help="keep the temp folder (server log, demo models)")
    return p.parse_args(argv)


# ------------------------------------------------------------------------------------------ graph edits

def set_text(prompt: dict, title: str, text: str | None) -> None:
    if text is None:
        return
    node = ch.node_by_title(prompt, title)
    if node is None:
        raise ch.HeadlessError(f"the workflow has no CLIPTextEncode titled {title!r} to put the text in.")
    prompt[node]["inputs"]["text"] = text


def apply_overrides(prompt: dict, args) -> dict:
    set_text(prompt, TITLE_PROMPT, args.prompt)
    set_text(prompt, TITLE_REF_PROMPT, args.reference_prompt)
    if args.negative_prompt is not None:
        set_text(prompt, TITLE_NEGATIVE, args.negative_prompt)
        set_text(prompt, TITLE_REF_NEGATIVE, args.negative_prompt)
    # KSampler (Wan) or a NOISE node + BasicScheduler (CogVideoX, SamplerCustomAdvanced). CogVideoX: the
    # conditioning's seed too, as the official pipeline draws the VAE samples and the noise from one seeded stream
    for class_type, seed_key, steps_key in (("KSampler", "seed", "steps"), ("RandomNoise", "noise_seed", None),
                                            ("VAPOfficialNoise", "noise_seed", None),
                                            ("VAPCogConditioning", "seed", None),
                                            ("VAPCogConditioningFromReference", "seed", None),
                                            ("BasicScheduler", None, "steps")):
        for node in ch.nodes_of(prompt, class_type):
            if args.seed is not None and seed_key:
                prompt[node]["inputs"][seed_key] = args.seed
            if args.steps is not None and steps_key:
                prompt[node]["inputs"][steps_key] = args.steps
    return prompt


def set_inputs(prompt: dict, image: str | None, video: str | None) -> None:
    if image is not None:
        for node in ch.nodes_of(prompt, "LoadImage"):
            prompt[node]["inputs"]["image"] = image
    if video is not None:
        for node in ch.nodes_of(prompt, "VAPLoadReferenceVideo"):
            prompt[node]["inputs"]["file"] = video


def model_downloads(workflow: str) -> dict[str, dict]:
    """{file name: {url, directory}} from the UI-format twin of a shipped workflow."""
    ui = os.path.join(ch.WORKFLOW_DIR, f"{workflow}.json")
    if not os.path.isfile(ui):
        return {}
    with open(ui, encoding="utf-8") as f:
        nodes = json.load(f).get("nodes", [])
    return {m["name"]: m for n in nodes for m in (n.get("properties") or {}).get("models", [])}


def check_models(client: ch.ComfyClient, prompt: dict, workflow: str) -> None:
    """Say which model files are missing, where to get them and where to put them, before queueing."""
    downloads = model_downloads(workflow)
    info = client.object_info()
    missing = []
    for node in prompt.values():
        spec = info.get(node["class_type"], {}).get("input", {})
        for name, value in node["inputs"].items():
            if not isinstance(value, str) or not value.endswith((".safetensors", ".pth", ".pt", ".ckpt", ".gguf")):
                continue
            entry = spec.get("required", {}).get(name) or spec.get("optional", {}).get(name)
            if not entry:
                continue
            options = entry[0] if isinstance(entry[0], list) else (entry[1] or {}).get("options", [])
            if value not in options:
                d = downloads.get(value)
                if d:
                    where = f"download {d['url']}\n      into ComfyUI/models/{d['directory']}/"
                elif node["class_type"] in ("VAPExpertLoader", "UNETLoader") and "cogvideox" in value.lower():
                    flag, folder = ("--expert", "vap") if node["class_type"] == "VAPExpertLoader" else ("--base", "diffusion_models")
                    where = ("convert the official release (expert and base):\n      python -m vap_core.convert "
                             f"<Video-As-Prompt-CogVideoX-5B folder> {flag} ComfyUI/models/{folder}/{value} --dtype bf16")
                elif node["class_type"] == "VAPExpertLoader":
                    where = ("convert the official release into ComfyUI/models/vap/:\n      python -m vap_core.convert "
                             f"<Video-As-Prompt-Wan2.1-14B folder> --expert ComfyUI/models/vap/{value} --dtype bf16")
                else:
                    where = "put it in the matching ComfyUI/models folder"
                missing.append(f"  {value} ({node['class_type']}): {where}")
    if missing:
        raise ch.HeadlessError("model files not found by ComfyUI:\n" + "\n".join(missing))


# ------------------------------------------------------------------------------------------ progress

class Progress:
    """One line per node, with a bar for nodes that report steps (KSampler, VAE decode...)."""

    def __init__(self, prompt: dict, stream=sys.stderr, prefix: str = ""):
        self.prompt = prompt
        self.stream = stream
        self.current = None
        self.started = time.monotonic()
        self.prefix = prefix          # several servers print side by side: each line says whose it is
        self.tty = stream.isatty() and not prefix

    def _title(self, node):
        n = self.prompt.get(node, {})
        return (n.get("_meta") or {}).get("title") or n.get("class_type", node)

    def __call__(self, event: dict):
        kind, data = event.get("type"), event.get("data") or {}
        if kind == "execution_cached" and data.get("nodes"):
            self._line(f"cached: {len(data['nodes'])} node(s)")
        elif kind == "executing" and data.get("node") is not None:
            self.current = data["node"]
            self._line(f"{self._title(self.current)}")
        elif kind == "progress":
            value, total = int(data.get("value", 0)), max(1, int(data.get("max", 1)))
            width = 30
            done = width * value // total
            text = f"{self.prefix}  [{'#' * done}{'.' * (width - done)}] {value}/{total} {self._title(data.get('node'))}"
            if self.tty:
                self.stream.write("\r" + text)
                if value >= total:
                    self.stream.write("\n")
            elif value >= total or value == 1 or value % max(1, total // 10) == 0:
                self.stream.write(text + "\n")
            self.stream.flush()
        elif kind == "execution_success":
            self._line(f"done in {time.monotonic() - self.started:.1f} s")

    def _line(self, text):
        self.stream.write(f"{self.prefix}[{time.monotonic() - self.started:7.1f}s] {text}\n")
        self.stream.flush()


# ------------------------------------------------------------------------------------------ main

def demo_modules():
    """(the demo assets module, custom-node folders to load) for --demo."""
    from .demo import assets
    return assets, [(PACK_DIR, "ComfyUI-VAP"), assets.STANDIN_NODES_DIR]


class Session:
    """The servers a run talks to: private ones started here (the default, ``--demo``; ``--launch N`` of them, each
    on its own ``--cuda-device`` with ``--gpus``) or running ones (``--server HOST:PORT``, repeatable). ``prompt``
    is the workflow as it will run (``--demo`` swaps in tiny models and sizes). ``client`` is the first server's."""

    def __init__(self, args, prompt: dict, work: str):
        self.args, self.prompt, self.work = args, prompt, work
        self.servers: list[ch.ComfyServer] = []
        self.clients: list[ch.ComfyClient] = []

    @property
    def client(self) -> ch.ComfyClient:
        return self.clients[0]

    def _private_servers(self) -> list[ch.ComfyServer]:
        args, work = self.args, self.work
        comfyui, how = ch.find_comfyui(args.comfyui)
        print(f"ComfyUI: {comfyui} ({how})", file=sys.stderr)
        count = max(1, args.launch or 1)
        gpus = [g.strip() for g in (args.gpus or "").split(",") if g.strip()]
        if gpus and len(gpus) < count:
            raise ch.HeadlessError(f"--gpus names {len(gpus)} device(s) for --launch {count}: name one per server.")
        common = {"extra_args": list(args.comfy_arg)}
        if args.demo:
            assets, node_dirs = demo_modules()
            print("demo: writing tiny random models and inputs ...", file=sys.stderr)
            assets.import_comfy(comfyui)
            base = os.path.join(work, "base")
            assets.make_base_directory(base, cog=assets.is_cog_prompt(self.prompt))
            common.update(custom_node_dirs=node_dirs, base_directory=base, cpu=True)
        else:
            node_dirs = [] if ch.pack_in_custom_nodes(comfyui) else [(PACK_DIR, "ComfyUI-VAP")]
            os.makedirs(os.path.join(work, "input"), exist_ok=True)
            common.update(custom_node_dirs=node_dirs, input_directory=os.path.join(work, "input"),
                          output_directory=os.path.join(work, "output"), cpu=args.cpu)
        if count > 1 and common.get("cpu"):
            # CPU servers side by side share the cores: give each its part, or their thread pools spin against
            # each other (measured 8x slower than one server with all cores)
            threads = str(max(1, (os.cpu_count() or 1) // count))
            common["env"] = {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
        servers = []
        for i in range(count):
            extra = common["extra_args"] + (["--cuda-device", gpus[i]] if gpus else [])
            servers.append(ch.ComfyServer(comfyui, **{**common, "extra_args": extra},
                                          log_path=os.path.join(work, f"server{i}.log" if count > 1 else "server.log"),
                                          database_path=os.path.join(work, f"comfyui{i}.db")))
        return servers

    def __enter__(self) -> "Session":
        args = self.args
        if args.demo:
            self.prompt = demo_modules()[0].tiny_prompt(self.prompt)
        if not args.server:
            self.servers = self._private_servers()
            for server in self.servers:  # start them side by side, then wait for each
                print(f"starting ComfyUI on {server.address} (log: {server.log_path}) ...", file=sys.stderr)
                server.launch()
            for server in self.servers:
                server.wait_ready()
            addresses = [s.address for s in self.servers]
        else:
            addresses = [a.replace("http://", "").rstrip("/") for a in args.server]
        self.clients = [ch.ComfyClient(a) for a in addresses]
        return self

    def __exit__(self, *exc):
        for client in self.clients:
            client.close()
        for server in self.servers:
            server.stop()


def run_one(session: Session, prompt: dict, on_event=None) -> dict:
    """Queue ``prompt``, wait, and return the file info of the video it saved; raises PromptError."""
    result = session.client.run(prompt, timeout=session.args.timeout, on_event=on_event)
    result.raise_for_status()
    files = [f for f in result.output_files() if f["filename"].endswith((".mp4", ".webm", ".mov"))]
    if not files:
        raise ch.HeadlessError("the workflow finished but reported no video file.")
    return files[-1]


DEMO_NOTE = ("NOTE: --demo uses tiny RANDOM weights: this video is noise. It only shows that the VAP graph runs end to end "
             "here (loaders, expert, conditioning, sampler, decode, save).")


def _stop_on_sigterm(signum, frame):
    raise KeyboardInterrupt  # a scheduler's or a test's SIGTERM ends a run as Ctrl-C does (server stopped, no partial file)


def main(argv=None) -> int:
    args = parse_args(argv)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _stop_on_sigterm)
    try:
        prompt = ch.load_api_workflow(args.workflow)
    except ch.HeadlessError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    workflow_name = os.path.splitext(os.path.basename(args.workflow))[0].replace(".api", "")
    if args.csv:
        from .batch import main as batch_main
        return batch_main(args, prompt, workflow_name)
    if len(args.server or []) > 1 or (args.launch or 1) > 1:
        print("error: several servers (--server twice, --launch N) are for a --csv batch; one video uses one",
              file=sys.stderr)
        return 2
    output = os.path.abspath(args.output or ("vap_demo_noise.mp4" if args.demo else "vap_output.mp4"))
    if not args.demo and not args.server:
        missing = [f for f in ("image", "reference_video") if getattr(args, f) is None]
        if missing:
            print("error: give --image and --reference-video (or --demo for a smoke test)", file=sys.stderr)
            return 2
    for path in (args.image, args.reference_video):
        if path and not os.path.isfile(path):
            print(f"error: {path} not found", file=sys.stderr)
            return 2

    work = tempfile.mkdtemp(prefix="vap_run_")
    try:
        with Session(args, prompt, work) as session:
            prompt, client = session.prompt, session.client
            apply_overrides(prompt, args)
            image = client.upload(args.image) if args.image else None
            video = client.upload(args.reference_video) if args.reference_video else None
            set_inputs(prompt, image, video)
            if not args.demo:
                check_models(client, prompt, workflow_name)
            try:
                video_file = run_one(session, prompt, on_event=Progress(prompt))
            except KeyboardInterrupt:
                print("\ninterrupted: stopping the run ...", file=sys.stderr)
                client.interrupt()
                return 130
            client.download(video_file, output)
            print(output)
            if args.demo:
                print(DEMO_NOTE, file=sys.stderr)
            return 0
    except ch.HeadlessError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        if args.keep_temp:
            print(f"temp folder kept: {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
