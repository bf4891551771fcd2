"""Drive a real ComfyUI server without a browser: start it, submit API-format workflows, follow progress.

Used by the runner (``vap_headless.cli``) and by the pack's server tests. Standard library + aiohttp (a ComfyUI
requirement) only; no ComfyUI import, so it works from any Python that can start ComfyUI's ``main.py``.

* :func:`find_comfyui` finds the ComfyUI checkout (``--comfyui``, ``COMFYUI_PATH``, the ComfyUI whose
  ``custom_nodes/`` holds this pack, ``~/ComfyUI``).
* :class:`ComfyServer` starts ``python main.py`` on a free loopback port (optionally with its own base
  directory and extra custom-node folders registered through an ``extra_model_paths`` yaml) and stops it.
* :class:`ComfyClient` speaks the HTTP + websocket API of any running server (POST /prompt, /upload/image,
  /interrupt, GET /history, /view, the ``/ws`` event stream).
"""
from __future__ import annotations

import asyncio
import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid

PACK_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKFLOW_DIR = os.path.join(PACK_DIR, "workflows")        # UI-format graphs: what ComfyUI lists as templates
API_WORKFLOW_DIR = os.path.join(WORKFLOW_DIR, "api")     # their API-format twins (a subfolder ComfyUI does not list)


class HeadlessError(RuntimeError):
    """Something a user must fix (no ComfyUI, server did not start, prompt refused...)."""


# ------------------------------------------------------------------------------------------ locating

def is_comfyui(path: str | None) -> bool:
    return bool(path) and os.path.isfile(os.path.join(path, "main.py")) and \
        os.path.isfile(os.path.join(path, "comfy", "model_management.py"))


def find_comfyui(explicit: str | None = None) -> tuple[str, str]:
    """(ComfyUI path, how it was found); raises HeadlessError with what was tried."""
    tried = []
    candidates = []
    if explicit:
        candidates.append((explicit, "--comfyui"))
    elif os.environ.get("COMFYUI_PATH"):
        candidates.append((os.environ["COMFYUI_PATH"], "COMFYUI_PATH"))
    else:
        parent = os.path.dirname(PACK_DIR)
        if os.path.basename(parent) == "custom_nodes":
            candidates.append((os.path.dirname(parent), "the ComfyUI holding this pack in custom_nodes/"))
        candidates.append((os.path.expanduser("~/ComfyUI"), "~/ComfyUI"))
    for path, how in candidates:
        if is_comfyui(path):
            return os.path.abspath(path), how
        tried.append(f"{how} ({path})")
    raise HeadlessError("ComfyUI not found; tried " + ", ".join(tried) + ". Pass --comfyui /path/to/ComfyUI "
                        "or set COMFYUI_PATH.")


def pack_in_custom_nodes(comfyui: str) -> bool:
    """Whether ComfyUI's own custom_nodes/ already holds this pack (directly or as a symlink)."""
    folder = os.path.join(comfyui, "custom_nodes")
    if not os.path.isdir(folder):
        return False
    me = os.path.realpath(PACK_DIR)
    return any(os.path.realpath(os.path.join(folder, name)) == me for name in os.listdir(folder))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------------------------ server

class ComfyServer:
    """A private ComfyUI server process on 127.0.0.1.

    ``custom_node_dirs``: folders (or ``(folder, name)`` pairs) to load as custom nodes in addition to
    ComfyUI's own (each is symlinked into a temp folder that an ``extra_model_paths`` yaml registers under ``custom_nodes:``).
    ``base_directory``: ComfyUI's ``--base-directory`` (models/, input/, output/, user/, custom_nodes/ of
    its own); None = the checkout's folders. ``extra_args`` go to main.py as they are.
    """

    def __init__(self, comfyui: str, custom_node_dirs: list[str] = (), base_directory: str | None = None,
                 input_directory: str | None = None, output_directory: str | None = None, cpu: bool = False,
                 extra_args: list[str] = (), python: str | None = None, log_path: str | None = None,
                 database_path: str | None = None, env: dict | None = None):
        self.comfyui = comfyui
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self._work = tempfile.mkdtemp(prefix="vap_server_")
        self.log_path = log_path or os.path.join(self._work, "server.log")
        args = [python or sys.executable, "main.py", "--listen", "127.0.0.1", "--port", str(self.port),
                "--disable-auto-launch"]
        if custom_node_dirs:
            links = os.path.join(self._work, "custom_nodes")
            os.makedirs(links)
            for entry in custom_node_dirs:
                path, name = entry if isinstance(entry, (tuple, list)) else (entry, os.path.basename(os.path.normpath(entry)))
                os.symlink(os.path.abspath(path), os.path.join(links, name))
            yaml_path = os.path.join(self._work, "extra_model_paths.yaml")
            with open(yaml_path, "w") as f:
                f.write(f"vap_headless:\n    custom_nodes: {json.dumps(links)}\n")
            args += ["--extra-model-paths-config", yaml_path]
        if base_directory:
            for sub in ("custom_nodes", "models", "input", "output", "temp", "user"):
                os.makedirs(os.path.join(base_directory, sub), exist_ok=True)
            args += ["--base-directory", base_directory]
            # keep the server's database beside its base directory, never in the checkout
            database_path = database_path or os.path.join(os.path.abspath(base_directory), "comfyui.db")
        if database_path:  # servers sharing a base directory each keep their own database
            args += ["--database-url", "sqlite:///" + os.path.abspath(database_path)]
        if input_directory:
            args += ["--input-directory", input_directory]
        if output_directory:
            args += ["--output-directory", output_directory]
        if cpu:
            args.append("--cpu")
        args += list(extra_args)
        self.args = args
        self.env = dict(env or {})  # on top of this process's environment
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 300.0) -> "ComfyServer":
        self.launch()
        return self.wait_ready(timeout)

    def launch(self) -> "ComfyServer":
        """Start the process (returns at once; :meth:`wait_ready` waits for it to answer)."""
        log = open(self.log_path, "ab")
        env = {**os.environ, **self.env}
        env.setdefault("PYTHONUNBUFFERED", "1")
        self.process = subprocess.Popen(self.args, cwd=self.comfyui, stdout=log, stderr=subprocess.STDOUT, env=env,
                                        start_new_session=True)
        log.close()
        return self

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def wait_ready(self, timeout: float = 300.0) -> "ComfyServer":
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise HeadlessError(f"ComfyUI exited with code {self.process.returncode} while starting.\n"
                                    f"Command: {' '.join(self.args)}\nLast log lines:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"http://{self.address}/system_stats", timeout=2) as r:
                    if r.status == 200:
                        return self
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            time.sleep(0.25)
        self.stop()
        raise HeadlessError(f"ComfyUI did not answer within {timeout:.0f} s.\nLast log lines:\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        try:
            with open(self.log_path, "rb") as f:
                return "\n".join(f.read().decode("utf-8", "replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def log_text(self) -> str:
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            # the server runs in its own session: signal only that process group (ours). SIGTERM, not SIGINT:
            # a server started from a background job inherits an ignored SIGINT
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
                self.process.wait(timeout=15)
            except (subprocess.TimeoutExpired, ProcessLookupError):
                try:
                    os.killpg(self.process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.process.wait(timeout=15)
        self.process = None

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self._work, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.cleanup()


# ------------------------------------------------------------------------------------------ client

class PromptError(HeadlessError):
    """The server refused a prompt (validation) or its execution failed."""

    def __init__(self, message: str, data: dict | None = None):
        super().__init__(message)
        self.data = data or {}


class _EventStream:
    """The ``/ws`` websocket in a background thread; JSON messages land in a queue."""

    def __init__(self, address: str, client_id: str):
        self.queue: queue.Queue = queue.Queue()
        self._url = f"ws://{address}/ws?clientId={urllib.parse.quote(client_id)}"
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._loop = asyncio.new_event_loop()
        self._ws = None
        self._thread = threading.Thread(target=self._loop.run_until_complete, args=(self._run(),), daemon=True)
        self._thread.start()
        if not self._ready.wait(30):
            raise HeadlessError(f"could not open the websocket {self._url}: {self._error or 'timeout'}")
        if self._error is not None:
            raise HeadlessError(f"could not open the websocket {self._url}: {self._error}")

    async def _run(self):
        import aiohttp
        try:
            async with aiohttp.ClientSession() as session:
                async with session.ws_connect(self._url, max_msg_size=0, autoping=True) as ws:
                    self._ws = ws
                    self._ready.set()
                    async for msg in ws:
                        if msg.type == aiohttp.WSMsgType.TEXT:
                            self.queue.put(json.loads(msg.data))
                        elif msg.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                            break
                        # binary messages are latent previews: not needed here
        except BaseException as e:  # noqa: BLE001 - reported to the waiting thread
            self._error = e
            self._ready.set()
        finally:
            self.queue.put({"type": "_closed", "data": {"error": repr(self._error) if self._error else None}})

    def close(self):
        if self._ws is not None and not self._ws.closed:
            asyncio.run_coroutine_threadsafe(self._ws.close(), self._loop)
        self._thread.join(10)


class ComfyClient:
    """HTTP + websocket client of one ComfyUI server (``address`` = host:port)."""

    def __init__(self, address: str, client_id: str | None = None):
        self.address = address
        self.client_id = client_id or uuid.uuid4().hex
        self.events = _EventStream(address, self.client_id)

    def close(self):
        self.events.close()

    # -- plain HTTP
    def _request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None,
                 timeout: float = 60):
        req = urllib.request.Request(f"http://{self.address}{path}", data=body, method=method, headers=headers or {})
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()

    def get_json(self, path: str):
        return json.loads(self._request("GET", path)[1])

    def object_info(self, node_class: str | None = None) -> dict:
        return self.get_json("/object_info" + (f"/{urllib.parse.quote(node_class)}" if node_class else ""))

    def queue_prompt(self, prompt: dict, extra_data: dict | None = None) -> str:
        """POST /prompt; returns the prompt id, raises PromptError with the server's explanation."""
        payload = {"prompt": prompt, "client_id": self.client_id}
        if extra_data:
            payload["extra_data"] = extra_data
        try:
            _, body = self._request("POST", "/prompt", json.dumps(payload).encode(),
                                    {"Content-Type": "application/json"})
        except urllib.error.HTTPError as e:
            data = _json_or_text(e.read())
            raise PromptError("ComfyUI refused the workflow:\n" + describe_validation_error(data), data) from None
        return json.loads(body)["prompt_id"]

    def interrupt(self) -> None:
        self._request("POST", "/interrupt", b"{}", {"Content-Type": "application/json"})

    def history(self, prompt_id: str) -> dict:
        return self.get_json(f"/history/{urllib.parse.quote(prompt_id)}").get(prompt_id, {})

    def upload(self, path: str, name: str | None = None, subfolder: str = "") -> str:
        """Upload a file into the server's input folder (POST /upload/image takes any file); returns its
        name as LoadImage / a file combo expects it. Never overwrites: the server reuses an identical file
        of that name or picks a new name ("name (1).ext")."""
        name = name or os.path.basename(path)
        boundary = uuid.uuid4().hex
        with open(path, "rb") as f:
            content = f.read()
        parts = []
        for key, value in (("type", "input"), ("subfolder", subfolder)):
            parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{key}"\r\n\r\n{value}\r\n'.encode())
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{name}"\r\n'
                     f"Content-Type: application/octet-stream\r\n\r\n".encode() + content + b"\r\n")
        parts.append(f"--{boundary}--\r\n".encode())
        _, body = self._request("POST", "/upload/image", b"".join(parts),
                                {"Content-Type": f"multipart/form-data; boundary={boundary}"}, timeout=600)
        info = json.loads(body)
        return f"{info['subfolder']}/{info['name']}" if info.get("subfolder") else info["name"]

    def download(self, file_info: dict, dest: str) -> str:
        query = urllib.parse.urlencode({"filename": file_info["filename"], "subfolder": file_info.get("subfolder", ""),
                                        "type": file_info.get("type", "output")})
        _, body = self._request("GET", f"/view?{query}", timeout=600)
        os.makedirs(os.path.dirname(os.path.abspath(dest)), exist_ok=True)
        tmp = dest + ".partial"
        with open(tmp, "wb") as f:
            f.write(body)
        os.replace(tmp, dest)
        return dest

    # -- websocket events
    def next_event(self, timeout: float | None = None) -> dict:
        try:
            return self.events.queue.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"no ComfyUI event within {timeout} s") from None

    def wait(self, prompt_id: str, timeout: float = 3600, on_event=None) -> "RunResult":
        """Collect events of ``prompt_id`` until it finishes (success, error or interrupt)."""
        result = RunResult(prompt_id)
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"prompt {prompt_id} did not finish within {timeout} s")
            event = self.next_event(timeout=left)
            kind, data = event.get("type"), event.get("data") or {}
            if kind == "_closed":
                raise HeadlessError(f"the server closed the websocket ({data.get('error')}); is it still running?")
            if data.get("prompt_id") not in (None, prompt_id):
                continue
            if kind in ("status", "crystools.monitor") or (kind != "executing" and data.get("prompt_id") is None):
                continue
            result.events.append(event)
            if on_event is not None:
                on_event(event)
            if kind == "execution_cached":
                result.cached.update(data.get("nodes", []))
            elif kind == "executing" and data.get("node") is not None:
                result.executed.append(data["node"])
            elif kind == "progress":
                result.progress.append(data)
            elif kind == "executed":
                result.outputs[data["node"]] = data.get("output") or {}
            elif kind == "execution_success":
                result.status = "success"
                return result
            elif kind == "execution_error":
                result.status, result.error = "error", data
                return result
            elif kind == "execution_interrupted":
                result.status = "interrupted"
                return result
            elif kind == "executing" and data.get("node") is None and data.get("prompt_id") == prompt_id:
                result.status = result.status or "success"
                return result

    def run(self, prompt: dict, timeout: float = 3600, on_event=None, extra_data: dict | None = None) -> "RunResult":
        return self.wait(self.queue_prompt(prompt, extra_data), timeout=timeout, on_event=on_event)


class RunResult:
    def __init__(self, prompt_id: str):
        self.prompt_id = prompt_id
        self.status: str | None = None
        self.error: dict | None = None
        self.events: list[dict] = []
        self.cached: set[str] = set()
        self.executed: list[str] = []
        self.progress: list[dict] = []
        self.outputs: dict[str, dict] = {}

    def raise_for_status(self) -> "RunResult":
        if self.status == "error":
            raise PromptError(describe_execution_error(self.error), self.error)
        if self.status == "interrupted":
            raise PromptError("the run was interrupted", {})
        return self

    def output_files(self) -> list[dict]:
        """Every file an output node reported (SaveVideo reports its mp4 under 'images')."""
        files = []
        for out in self.outputs.values():
            for key in ("images", "videos", "gifs", "video"):
                for item in out.get(key, []) or []:
                    if isinstance(item, dict) and "filename" in item:
                        files.append(item)
        return files


def _json_or_text(raw: bytes):
    try:
        return json.loads(raw)
    except ValueError:
        return {"error": {"message": raw.decode("utf-8", "replace")}}


def describe_validation_error(data: dict) -> str:
    lines = []
    err = data.get("error") or {}
    if isinstance(err, dict):
        lines.append(f"{err.get('message', '')} {err.get('details', '')}".strip())
    for node_id, info in (data.get("node_errors") or {}).items():
        for e in info.get("errors", []):
            lines.append(f"  node {node_id} ({info.get('class_type')}): {e.get('message')}: {e.get('details')}")
    return "\n".join(lines) or json.dumps(data)


def describe_execution_error(data: dict | None) -> str:
    data = data or {}
    kind = str(data.get("exception_type", "error")).rsplit(".", 1)[-1]  # custom-node types carry a module path
    return (f"node {data.get('node_id')} ({data.get('node_type')}) failed: "
            f"{kind}: {str(data.get('exception_message', '')).strip()}")


# ------------------------------------------------------------------------------------------ workflows

def load_api_workflow(name_or_path: str) -> dict:
    """A shipped API workflow by name (``wan_vap_official``) or any API-format JSON file."""
    path = name_or_path
    if not os.path.isfile(path):
        path = os.path.join(API_WORKFLOW_DIR, f"{name_or_path}.api.json")
    if not os.path.isfile(path):
        raise HeadlessError(f"workflow {name_or_path!r} not found (looked for {path}).")
    with open(path) as f:
        prompt = json.load(f)
    if "nodes" in prompt and "links" in prompt:
        raise HeadlessError(f"{path} is a UI-format workflow; the runner needs the API format (*.api.json, "
                            "or 'Export (API)' in ComfyUI).")
    return prompt


def nodes_of(prompt: dict, class_type: str) -> list[str]:
    return [k for k, v in prompt.items() if v.get("class_type") == class_type]


def node_by_title(prompt: dict, title: str) -> str | None:
    for k, v in prompt.items():
        if (v.get("_meta") or {}).get("title") == title:
            return k
    return None


CONDITIONING_NODES = ("VAPWanConditioning", "VAPCogConditioning")  # one node: size and length widgets (deprecated)
# Encode Reference + Conditioning from Reference: the size and length come from the reference loader
REFERENCE_CONDITIONING_NODES = ("VAPWanConditioningFromReference", "VAPCogConditioningFromReference")


def reference_loader(prompt: dict, conditioning: dict) -> str:
    """The id of the 'Load VAP Reference Video' node behind a Conditioning from Reference node (through its
    Encode Reference node)."""
    encode = prompt.get(str((conditioning["inputs"].get("reference") or [None])[0]), {})
    loader = str((encode.get("inputs", {}).get("reference_frames") or [None])[0])
    if prompt.get(loader, {}).get("class_type") != "VAPLoadReferenceVideo":
        raise HeadlessError("the workflow's VAP conditioning takes its reference from an Encode Reference node that "
                            "is not fed by 'Load VAP Reference Video': the runner cannot tell the video's size.")
    return loader


def shipped_size(prompt: dict) -> tuple[int, int, int]:
    """(width, height, length) of a workflow's video (832x480x49 Wan, 720x480x49 CogVideoX): the one-node
    conditioning's widgets, or the reference loader's size and frames (+ extra_frames) behind a Conditioning from
    Reference node."""
    for node in prompt.values():
        if node["class_type"] in CONDITIONING_NODES:
            i = node["inputs"]
            return i["width"], i["height"], i["length"]
    for node in prompt.values():
        if node["class_type"] in REFERENCE_CONDITIONING_NODES:
            i = prompt[reference_loader(prompt, node)]["inputs"]
            return i["width"], i["height"], i["num_frames"] + node["inputs"].get("extra_frames", 0)
    raise HeadlessError("the workflow has no VAP conditioning node (VAPWanConditioningFromReference / "
                        "VAPCogConditioningFromReference, or the older VAPWanConditioning / VAPCogConditioning).")


def resize_workflow(prompt: dict, width: int, height: int, length: int) -> dict:
    """Scale every width/height widget by width/W and height/H of the workflow's own size (its conditioning
    node's) and set every frame count of that length to ``length`` (the conditioning's length,
    VAPLoadReferenceVideo.num_frames). Upscaled sizes scale the same way. Shorter frame counts (the long-video
    workflow's 49-frame reference and context windows) stay, unless ``length`` is below the shipped length: then they
    shrink in proportion (4k+1 frames), so the windows stay shorter than the video."""
    sw, sh, sl = shipped_size(prompt)
    shrink = min(1.0, length / sl)
    out = json.loads(json.dumps(prompt))
    for node in out.values():
        inputs = node.get("inputs", {})
        for key, ref in (("width", sw), ("height", sh)):
            if isinstance(inputs.get(key), int):
                target = width if key == "width" else height
                inputs[key] = int(round(inputs[key] * target / ref))
        for key in ("length", "num_frames"):
            if inputs.get(key) == sl:
                inputs[key] = length
            elif key == "num_frames" and _is_count(inputs.get(key)) and inputs[key] < sl and shrink < 1:
                inputs[key] = _frames_4k1(inputs[key] * shrink)
        if node.get("class_type") in CONTEXT_WINDOW_NODES and shrink < 1:
            if _is_count(inputs.get("context_length")):
                inputs["context_length"] = _frames_4k1(inputs["context_length"] * shrink)
            if _is_count(inputs.get("context_overlap")):
                inputs["context_overlap"] = int(round(inputs["context_overlap"] * shrink))
    for node in out.values():  # the video = the (resized) reference + extra_frames: keep it at ``length``
        if node["class_type"] in REFERENCE_CONDITIONING_NODES and _is_count(node["inputs"].get("extra_frames")):
            node["inputs"]["extra_frames"] = max(0, length - out[reference_loader(out, node)]["inputs"]["num_frames"])
    return out


CONTEXT_WINDOW_NODES = ("WanContextWindowsManual",)  # frame counts in pixel frames (4k+1)


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _frames_4k1(frames: float) -> int:
    return max(1, int(round((frames - 1) / 4)) * 4 + 1)
