"""One real ComfyUI server (``python main.py --cpu``) for the end-to-end test modules, and their helpers.

The server runs from the host checkout on a free 127.0.0.1 port with its own base directory (tiny Wan and
CogVideoX models in models/, inputs in input/, output/); this pack and the test node pack
(vap_headless/demo/standin_nodes) are registered as custom nodes. ``conftest.server`` starts it once per session.
"""
from __future__ import annotations

import os

import numpy as np

import host

TESTS = os.path.dirname(os.path.abspath(__file__))
PACK = os.path.dirname(TESTS)


def start(base: str, extra_node_dirs=(), cog: bool = True, prepare=None):
    """Yield the server dict: {server, client, base, ch, assets}; stops the server afterwards.

    ``extra_node_dirs``: more custom-node folders (or ``(folder, name)`` pairs); ``cog=False``: no CogVideoX
    models; ``prepare(base)``: called after the base directory is written, before the server starts."""
    host.import_host()  # comfy importable here (CPU) to write the tiny models
    from vap_headless import client as ch
    from vap_headless.demo import assets as e2e_assets
    e2e_assets.make_base_directory(base, cog=cog)
    if prepare is not None:
        prepare(base)
    srv = ch.ComfyServer(host.COMFYUI_PATH, custom_node_dirs=[(PACK, "ComfyUI-VAP"), e2e_assets.STANDIN_NODES_DIR,
                                                              *extra_node_dirs],
                         base_directory=base, cpu=True)
    srv.start()
    client = None
    try:
        client = ch.ComfyClient(srv.address)
        yield {"server": srv, "client": client, "base": base, "ch": ch, "assets": e2e_assets}
    finally:
        if client is not None:
            client.close()
        srv.cleanup()


def tiny(server, name: str) -> dict:
    """A shipped API workflow with only file names, sizes and stand-in loaders changed."""
    ch, assets = server["ch"], server["assets"]
    return assets.tiny_prompt(ch.load_api_workflow(name))


def run_ok(server, prompt, timeout=900):
    result = server["client"].run(prompt, timeout=timeout)
    assert result.status == "success", (server["ch"].describe_execution_error(result.error)
                                        + "\n" + server["server"].log_tail())
    return result


def video(server, result, tmp_path) -> dict:
    """The run's one mp4, downloaded over HTTP and decoded: frames [N, H, W, 3], fps, codec, size, path."""
    import av
    files = [f for f in result.output_files() if f["filename"].endswith(".mp4")]
    assert len(files) == 1, result.outputs
    path = server["client"].download(files[0], str(tmp_path / files[0]["filename"]))
    with av.open(path) as container:
        stream = container.streams.video[0]
        frames = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(stream)])
        return {"frames": frames, "fps": float(stream.average_rate), "codec": stream.codec_context.name,
                "width": stream.width, "height": stream.height, "path": path}
