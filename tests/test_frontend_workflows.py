"""The shipped UI-format workflows in the REAL ComfyUI frontend (the one the host pins and serves).

A ComfyUI server (pack loaded, model folders holding empty files with the real model names, inputs with
the shipped names) serves its frontend to headless Debian Chromium over the DevTools protocol. For each
workflows/*.json (UI format):

* every node type is registered (no "missing nodes"), every node is created;
* no widget error: each combo value is one of its options (model files, samplers...), numbers within
  their limits, and the frontend's own missing-model check does not fire;
* the frontend's own UI -> API conversion (``app.graphToPrompt``, what "Queue" and "Export (API)" use)
  gives exactly the shipped ``*.api.json``, so both formats describe the same run;
* no page exception; a screenshot of the loaded graph is saved (tmp dir, or docs/img/ with
  ``VAP_WRITE_SCREENSHOTS=1``).

Skips with the reason when there is no host or no chromium (``apt-get install -y chromium``).
"""
from __future__ import annotations

import json
import os
import sys
import time

import pytest

import host

TESTS = os.path.dirname(os.path.abspath(__file__))
PACK = os.path.dirname(TESTS)
WORKFLOWS = os.path.join(PACK, "workflows")
API_WORKFLOWS = os.path.join(WORKFLOWS, "api")

from vap_headless import browser, build_workflows  # noqa: E402
from vap_headless import client as comfy_headless  # noqa: E402

pytestmark = [pytest.mark.server, pytest.mark.host]
UI_FILES = sorted(f for f in os.listdir(WORKFLOWS) if f.endswith(".json") and not f.endswith(".api.json"))


@pytest.fixture(scope="module")
def frontend(tmp_path_factory):
    if host.COMFYUI_PATH is None:
        pytest.skip(f"ComfyUI host not found: {host.HOW_FOUND}")
    chromium = browser.find_chromium()
    if chromium is None:
        pytest.skip("Chromium not installed: apt-get install -y chromium (or set CHROMIUM=/path/to/chrome)")
    if not os.path.isdir(os.path.join(host.COMFYUI_PATH, "web")) and not _frontend_package_installed():
        pytest.skip("the host's frontend package (comfyui-frontend-package) is not installed")
    base = str(tmp_path_factory.mktemp("frontend_base"))
    _placeholder_models(base)
    server = comfy_headless.ComfyServer(host.COMFYUI_PATH, custom_node_dirs=[(PACK, "ComfyUI-VAP")],
                                        base_directory=base, cpu=True)
    server.start()
    b = None
    try:
        _post_setting(server.address, "Comfy.TutorialCompleted", True)
        _post_setting(server.address, "Comfy.Minimap.Visible", False)
        b = browser.Browser(chromium, width=1600, height=1000)
        b.goto(f"http://{server.address}/")
        b.wait_for("window.app && window.app.graph && window.app.vueAppReady && window.LiteGraph", timeout=180)
        b.wait_for("!document.getElementById('splash-loader')", timeout=60)
        yield b, server
    finally:
        if b is not None:
            b.close()
        server.cleanup()


def _frontend_package_installed() -> bool:
    try:
        import comfyui_frontend_package  # noqa: F401
        return True
    except ImportError:
        return False


def _placeholder_models(base: str) -> None:
    """Empty files with the real names (combos list them); the real inputs' names in input/."""
    for m in build_workflows.MODELS.values():
        os.makedirs(os.path.join(base, "models", m["directory"]), exist_ok=True)
        open(os.path.join(base, "models", m["directory"], m["name"]), "wb").close()
    for name, directory in build_workflows.CONVERTED.items():
        os.makedirs(os.path.join(base, "models", directory), exist_ok=True)
        open(os.path.join(base, "models", directory, name), "wb").close()
    from vap_headless.demo import assets as e2e_assets
    inputs = os.path.join(base, "input")
    e2e_assets.write_inputs(inputs)
    os.replace(os.path.join(inputs, e2e_assets.INPUT_IMAGE), os.path.join(inputs, build_workflows.START_IMAGE))
    os.replace(os.path.join(inputs, e2e_assets.INPUT_VIDEO), os.path.join(inputs, build_workflows.REFERENCE_VIDEO))


def _post_setting(address: str, key: str, value) -> None:
    import urllib.request
    req = urllib.request.Request(f"http://{address}/settings/{key}", data=json.dumps(value).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    urllib.request.urlopen(req, timeout=10).read()


_CHECK_JS = r"""
async (wf, name) => {
  const app = window.app;
  await app.loadGraphData(wf, true, true, name);
  await new Promise(r => setTimeout(r, 300));
  const graph = app.graph;
  const registered = window.LiteGraph.registered_node_types;
  const missing = graph._nodes.filter(n => !registered[n.type]).map(n => `${n.id}:${n.type}`);
  const problems = [];
  for (const n of graph._nodes) {
    for (const w of n.widgets || []) {
      const o = w.options || {};
      let values = o.values;
      if (typeof values === 'function') values = values(w, n);
      if (Array.isArray(values) && w.name !== 'control_after_generate' && !values.includes(w.value))
        problems.push(`${n.id} ${n.type}.${w.name}=${JSON.stringify(w.value)} not in options`);
      if (typeof w.value === 'number') {
        if (o.min !== undefined && w.value < o.min) problems.push(`${n.id} ${n.type}.${w.name}=${w.value} < min ${o.min}`);
        if (o.max !== undefined && w.value > o.max) problems.push(`${n.id} ${n.type}.${w.name}=${w.value} > max ${o.max}`);
      }
    }
    if (n.has_errors) problems.push(`${n.id} ${n.type} has_errors`);
  }
  const links = graph.links instanceof Map ? graph.links.size : Object.keys(graph.links).length;
  const {output} = await app.graphToPrompt();
  // fit the whole graph into the view for the screenshot
  const xs = [], ys = [];
  for (const n of graph._nodes) { xs.push(n.pos[0], n.pos[0] + n.size[0]); ys.push(n.pos[1] - 40, n.pos[1] + n.size[1]); }
  for (const g of graph._groups) { xs.push(g._bounding[0], g._bounding[0] + g._bounding[2]); ys.push(g._bounding[1], g._bounding[1] + g._bounding[3]); }
  const [x0, x1, y0, y1] = [Math.min(...xs), Math.max(...xs), Math.min(...ys), Math.max(...ys)];
  const canvas = app.canvas, el = canvas.canvas;
  const [L, T, R, B] = [80, 90, 20, 20];  // keep clear of the side bar and the top bar
  const [W, H] = [el.clientWidth - L - R, el.clientHeight - T - B];
  const scale = Math.min(W / (x1 - x0), H / (y1 - y0));
  canvas.ds.scale = scale;
  canvas.ds.offset = [(L + (W - scale * (x1 - x0)) / 2) / scale - x0, T / scale - y0];
  canvas.setDirty(true, true);
  return {nodes: graph._nodes.length, missing, problems, links, output,
          text: document.body.innerText};
}
"""


def _normalise(prompt: dict) -> dict:
    return {k: {"class_type": v["class_type"], "inputs": v["inputs"]} for k, v in prompt.items()}


@pytest.mark.parametrize("ui_file", UI_FILES)
def test_ui_workflow_loads_cleanly_and_matches_api(frontend, ui_file, tmp_path):
    b, server = frontend
    with open(os.path.join(WORKFLOWS, ui_file), encoding="utf-8") as f:
        wf = json.load(f)
    with open(os.path.join(API_WORKFLOWS, ui_file.replace(".json", ".api.json")), encoding="utf-8") as f:
        api = json.load(f)
    b.exceptions.clear()
    result = b.evaluate(f"({_CHECK_JS})({json.dumps(wf)}, {json.dumps(ui_file)})")

    assert result["missing"] == [], f"node types the frontend does not know: {result['missing']}"
    assert result["nodes"] == len(wf["nodes"])
    assert result["links"] == len(wf["links"])
    assert result["problems"] == [], "widget errors:\n" + "\n".join(result["problems"])
    assert "missing" not in result["text"].lower(), \
        "the frontend reports something missing:\n" + result["text"][:2000]
    assert _normalise(result["output"]) == _normalise(api), \
        f"{ui_file} converts (frontend graphToPrompt) to a different API graph than {ui_file.replace('.json', '.api.json')}"
    assert b.exceptions == [], f"page exceptions: {b.exceptions}"

    # every loader that needs a download says where from (the frontend's missing-model dialog uses this)
    for node in wf["nodes"]:
        if node["type"] in build_workflows.LOADERS and node["widgets_values"][0] not in build_workflows.CONVERTED:
            models = node.get("properties", {}).get("models")
            assert models and models[0]["name"] == node["widgets_values"][0], node["type"]
            assert models[0]["url"].startswith("https://huggingface.co/") and models[0]["directory"], models

    time.sleep(0.5)  # let the canvas draw the fitted view
    name = ui_file.replace(".json", ".png")
    out_dir = os.path.join(PACK, "docs", "img") if os.environ.get("VAP_WRITE_SCREENSHOTS") == "1" else str(tmp_path)
    path = _small_png(b.screenshot(os.path.join(str(tmp_path), "full_" + name)), os.path.join(out_dir, name))
    assert os.path.getsize(path) > 10_000  # a drawn graph, not a blank page


def _saved_before_weight_dtype(wf: dict) -> dict:
    """``wf`` as the frontend saved it before *Load VAP Expert* had its optional ``weight_dtype`` input."""
    old = json.loads(json.dumps(wf))
    for node in old["nodes"]:
        if node["type"] == "VAPExpertLoader":
            node["inputs"] = [i for i in node.get("inputs", []) if i["name"] != "weight_dtype"]
            assert node["widgets_values"][-1] == "default"
            node["widgets_values"] = node["widgets_values"][:-1]
    return old


@pytest.mark.parametrize("ui_file", UI_FILES)
def test_graph_saved_before_weight_dtype_loads_with_the_default(frontend, ui_file):
    """The expert loader's weight_dtype is optional: a graph saved without it loads without widget errors and
    queues (graphToPrompt) the same run as the shipped API graph, weight_dtype "default"."""
    b, _ = frontend
    with open(os.path.join(WORKFLOWS, ui_file), encoding="utf-8") as f:
        old = _saved_before_weight_dtype(json.load(f))
    with open(os.path.join(API_WORKFLOWS, ui_file.replace(".json", ".api.json")), encoding="utf-8") as f:
        api = json.load(f)
    assert [n["inputs"]["weight_dtype"] for n in api.values() if n["class_type"] == "VAPExpertLoader"] == ["default"]
    b.exceptions.clear()
    result = b.evaluate(f"({_CHECK_JS})({json.dumps(old)}, {json.dumps('old_' + ui_file)})")
    assert result["missing"] == [] and result["problems"] == [], result["problems"]
    assert _normalise(result["output"]) == _normalise(api)
    assert b.exceptions == [], f"page exceptions: {b.exceptions}"


def _small_png(src: str, dest: str, width: int = 1200) -> str:
    """Downscaled, 256-colour PNG (a few hundred KB less in the repository)."""
    from PIL import Image
    with Image.open(src) as im:
        im = im.convert("RGB")
        im = im.resize((width, round(im.height * width / im.width)), Image.LANCZOS)
        im.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(dest, optimize=True)
    return dest



import saved_workflows  # noqa: E402


@pytest.mark.parametrize("name", saved_workflows.NAMES)
def test_workflow_saved_before_the_encoded_reference_nodes_loads(frontend, name):
    """A graph saved with the one-node conditioning (VAPWanConditioning / VAPCogConditioning, now deprecated: the
    workflows shipped before the encoded-reference nodes) loads with no missing node and no widget error, and the
    frontend queues the run it was saved with (inputs added since then only add their defaults)."""
    b, _ = frontend
    wf, api = saved_workflows.saved(name, api=False), saved_workflows.saved(name)
    assert {n["class_type"] for n in api.values()} & {"VAPWanConditioning", "VAPCogConditioning"}
    b.exceptions.clear()
    result = b.evaluate(f"({_CHECK_JS})({json.dumps(wf)}, {json.dumps('saved_' + name)})")
    assert result["missing"] == [], f"node types the frontend does not know: {result['missing']}"
    assert result["problems"] == [], "widget errors:\n" + "\n".join(result["problems"])
    assert result["nodes"] == len(wf["nodes"]) and result["links"] == len(wf["links"])
    assert "missing" not in result["text"].lower(), result["text"][:2000]
    output = result["output"]
    assert set(output) == set(api)
    for k, node in api.items():
        assert output[k]["class_type"] == node["class_type"]
        assert {i: output[k]["inputs"].get(i) for i in node["inputs"]} == node["inputs"], (k, node["class_type"])
    assert b.exceptions == [], f"page exceptions: {b.exceptions}"
