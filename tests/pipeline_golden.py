"""The official pipelines end to end, against the pack's graph built as a user builds it (helpers for
tests/test_pipeline_golden_*.py).

Golden cases: every folder with a ``call.json`` under ``VAP_PIPELINE_GOLDEN_DIR`` (default ``../shared/golden_pipeline``),
each made by running the official pipeline on tiny seeded models (its README in that folder describes the files).
Nothing about a case is written here: sizes, steps, seeds, prompts' embeddings and references come from its files;
the sampler settings come from the shipped official workflow of its variant (``workflows/api/*.api.json``).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field

import torch

import host

WORKFLOW_API = os.path.join(host.PACK_DIR, "workflows", "api")


def golden_root() -> str | None:
    path = os.environ.get("VAP_PIPELINE_GOLDEN_DIR") or os.path.join(host.PACK_DIR, "..", "shared", "golden_pipeline")
    return os.path.abspath(path) if os.path.isdir(path) else None


def cases(variant: str) -> list[str]:
    """Case folders of ``variant`` ("cog" | "wan"), told apart by the official pipeline class in call.json."""
    root = golden_root()
    if root is None:
        return []
    found = []
    for name in sorted(os.listdir(root)):
        call = os.path.join(root, name, "call.json")
        if os.path.isfile(call):
            pipeline = json.load(open(call, encoding="utf-8"))["official"]["pipeline"]
            if ("CogVideoX" in pipeline) == (variant == "cog"):
                found.append(os.path.join(root, name))
    return found


def case_params(variant: str) -> list:
    """pytest parameters: one per case, or a single None that the test skips with the reason."""
    return cases(variant) or [None]


def case_id(case) -> str:
    return os.path.basename(case) if case else "no-cases"


def skip_reason(case) -> str:
    return (f"no golden pipeline case: set VAP_PIPELINE_GOLDEN_DIR to a folder of official-pipeline cases "
            f"(looked in {golden_root() or 'VAP_PIPELINE_GOLDEN_DIR / ../shared/golden_pipeline'})")


def load(case: str, name: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file
    return load_file(os.path.join(case, f"{name}.safetensors"))


def call_json(case: str) -> dict:
    return json.load(open(os.path.join(case, "call.json"), encoding="utf-8"))


def shipped_workflow(name: str) -> dict:
    return json.load(open(os.path.join(WORKFLOW_API, f"{name}.api.json"), encoding="utf-8"))


def node_inputs(workflow: dict, class_type: str) -> dict:
    nodes = [n for n in workflow.values() if n["class_type"] == class_type]
    assert len(nodes) == 1, f"the shipped workflow has {len(nodes)} {class_type} nodes"
    return nodes[0]["inputs"]


def conditioning_inputs(workflow: dict, *class_types: str) -> dict:
    """The inputs of the workflow's one conditioning node, whichever of ``class_types`` it uses (the shipped
    workflows moved from the one-node conditioning to Encode Reference + Conditioning from Reference)."""
    nodes = [n for n in workflow.values() if n["class_type"] in class_types]
    assert len(nodes) == 1, f"the shipped workflow has {len(nodes)} nodes of {class_types}"
    return nodes[0]["inputs"]


def cog_vae_file(case: str) -> str:
    """The case's CogVideoX VAE, regenerated from its recipe by the script beside it (cached in the temp dir,
    content hash verified by the script)."""
    script = os.path.join(case, "vae", "cog_vae_weights.py")
    out = subprocess.run([sys.executable, script, case], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, f"{script} failed: {out.stderr[-2000:]}"
    path = out.stdout.strip().splitlines()[-1]
    assert os.path.isfile(path), out.stdout
    return path


# ------------------------------------------------------------------------------------ recording

class StepRecorder:
    """A SAMPLER_SAMPLE wrapper (ComfyUI's own extension point) that records, at each step, the sampler's x
    before the step and the guided x0 prediction, then passes everything on unchanged."""

    KEY = "vap_pipeline_golden"

    def __init__(self):
        self.x, self.x0 = [], []

    def attach(self, model_patcher):
        import comfy.patcher_extension
        patched = model_patcher.clone()
        patched.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.SAMPLER_SAMPLE, self.KEY, self)
        return patched

    def __call__(self, executor, guider, sigmas, extra_args, callback, noise, *args, **kwargs):
        def record(step, x0, x, total):
            self.x.append(x.detach().float().cpu().clone())
            self.x0.append(x0.detach().float().cpu().clone())
            if callback is not None:
                callback(step, x0, x, total)
        out = executor(guider, sigmas, extra_args, record, noise, *args, **kwargs)
        self.final = out.detach().float().cpu().clone()
        return out

    def after_each_step(self) -> list[torch.Tensor]:
        """x after step i = x before step i+1; the last one is the sampler's result (model space)."""
        return self.x[1:] + [self.final]


# ------------------------------------------------------------------------------------ comparison

@dataclass
class Stage:
    name: str
    got: torch.Tensor
    want: torch.Tensor
    atol: float
    why: str

    def max_abs(self) -> float:
        return (self.got.double() - self.want.double()).abs().max().item()


@dataclass
class Report:
    stages: list[Stage] = field(default_factory=list)

    def add(self, name, got, want, atol, why):
        got, want = torch.as_tensor(got).detach().cpu(), torch.as_tensor(want).detach().cpu()
        assert tuple(got.shape) == tuple(want.shape), f"{name}: shape {tuple(got.shape)} vs official {tuple(want.shape)}"
        self.stages.append(Stage(name, got, want, atol, why))

    def summary(self) -> str:
        return "\n".join(f"  {s.name}: max abs {s.max_abs():.3g} (tolerance {s.atol:g}: {s.why})" for s in self.stages)

    def perturbed(self, prefix: str) -> "Report":
        """A copy whose official values of the stages named ``prefix...`` moved by 10x their tolerance at one
        element (for checking that the comparison can fail)."""
        stages = []
        for s in self.stages:
            want = s.want.contiguous().clone()
            if s.name.startswith(prefix):
                want.view(-1)[want.numel() // 2] += 10 * max(s.atol, 1e-6)
            stages.append(Stage(s.name, s.got, want, s.atol, s.why))
        assert any(s.name.startswith(prefix) for s in stages), f"no stage named {prefix}..."
        return Report(stages)

    def check(self):
        """Every stage within its tolerance; the message lists all stages (so one run shows where it drifts)."""
        bad = [s for s in self.stages if not s.max_abs() <= s.atol]
        assert not bad, (f"{', '.join(s.name for s in bad)} off the official pipeline:\n" + self.summary())


def report_same_conditioning(report: Report, old, new) -> None:
    """Stages "one-node conditioning = pair: ...": every tensor the deprecated one-node conditioning hands on (text
    states, the target's concat_latent_image, every ``model_conds`` entry, the empty latent) equals the Encode
    Reference + Conditioning from Reference pair's, bit for bit (tolerance 0)."""
    report.add("one-node conditioning = pair: latent", old[2]["samples"], new[2]["samples"], 0, "same shape, zeros")
    for row, name in ((0, "positive"), (1, "negative")):
        assert len(old[row]) == len(new[row]) == 1
        (s_old, d_old), (s_new, d_new) = old[row][0], new[row][0]
        assert set(d_old) == set(d_new) and set(d_old["model_conds"]) == set(d_new["model_conds"])
        report.add(f"one-node conditioning = pair: {name} text", s_old, s_new, 0, "same states")
        for key in sorted(k for k, v in d_old.items() if isinstance(v, torch.Tensor)):  # concat_latent_image, ...
            report.add(f"one-node conditioning = pair: {name} {key}", d_old[key], d_new[key], 0, "same target")
        for key in sorted(d_old["model_conds"]):
            a, b = d_old["model_conds"][key].cond, d_new["model_conds"][key].cond
            if isinstance(a, torch.Tensor):
                report.add(f"one-node conditioning = pair: {name} {key}", a, b, 0, "same encode, same draws")
            else:
                assert a == b, f"{name} {key}: {a} != {b}"


def official_to_comfy(t: torch.Tensor) -> torch.Tensor:
    """[B, F, C, h, w] (official CogVideoX layout) -> [B, C, F, h, w] (ComfyUI's)."""
    return t.permute(0, 2, 1, 3, 4)


_RUNS: dict[tuple, object] = {}


def run_once(run_case, pack, case: str, tmp_path_factory):
    """``run_case(pack, case, tmp)`` once per case and test module (the comparison and the perturbation tests
    share one pipeline run)."""
    key = (run_case.__module__, case)
    if key not in _RUNS:
        _RUNS[key] = run_case(pack, case, tmp_path_factory.mktemp(case_id(case)))
    return _RUNS[key]


def assert_perturbations_rejected(report, stage_names) -> None:
    """Each named stage, moved slightly in a copy of the official outputs, makes the report fail on that stage."""
    import pytest
    for name in stage_names:
        with pytest.raises(AssertionError, match=name.split(",")[0]):
            report.perturbed(name).check()


def conditioning(states: torch.Tensor) -> list:
    """Stored text states as the CONDITIONING a text encode node gives."""
    return [[states, {"pooled_output": None}]]


def load_image(path: str) -> torch.Tensor:
    """What core 'Load Image' gives for an RGB png (exif transpose, RGB, /255, [1, H, W, 3])."""
    import numpy as np
    from PIL import Image, ImageOps
    image = ImageOps.exif_transpose(Image.open(path)).convert("RGB")
    return torch.from_numpy(np.array(image).astype(np.float32) / 255.0)[None]
