"""Convert an official Video-As-Prompt checkpoint for ComfyUI.

    python -m vap_core.convert SRC --expert OUT.safetensors [--base BASE.safetensors] [--dtype bf16]
    python -m vap_core.convert SRC --check-base MY_WAN_BASE.safetensors

SRC is the downloaded model folder (holding transformer/), the transformer/ folder, or one
official-layout safetensors file. Writes (a) the expert alone (``*_mot_ref`` tensors, native names,
config and expert blocks in the metadata) for models/vap/, and optionally (b) the base in ComfyUI's
native layout for models/diffusion_models/. Streams tensor by tensor (the 14B+5B checkpoint fits in
24 GB of RAM), writes to a temp file and renames, so an interrupted run leaves no output.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import torch

from .wan import keys as wan_keys
from .formats.checkpoint import COG, WAN, OfficialCheckpoint, open_official
from .errors import VAPError, VAPFormatError
from .formats.expert_file import expert_metadata
from .formats.safetensors_io import LazyTensors, write_streaming

DTYPES = {
    "fp32": torch.float32,
    "fp16": torch.float16,
    "bf16": torch.bfloat16,
    "fp8_e4m3fn": torch.float8_e4m3fn,
}


def key_map(ckpt: OfficialCheckpoint) -> tuple[dict[str, str], dict[str, str]]:
    """({native base name: official key}, {native expert name: official key})."""
    if ckpt.variant == WAN:
        return wan_keys.split_and_map(ckpt.tensors.keys())
    from .cogvideox import keys as cog_keys
    return cog_keys.split_and_map(ckpt.tensors.keys())


def target_dtype(name: str, shape: tuple[int, ...], source: torch.dtype, dtype: torch.dtype | None) -> torch.dtype:
    """fp8 only for 2-D matrices (linear weights), as ComfyUI's fp8 checkpoints do; norms, biases,
    modulation tables and the patch-embedding conv stay in bf16 for accuracy."""
    if dtype is None:
        return source
    if dtype == torch.float8_e4m3fn:
        return dtype if name.endswith(".weight") and len(shape) == 2 else torch.bfloat16
    return dtype


class _Progress:
    def __init__(self, label: str, quiet: bool):
        self.label, self.quiet, self.bar = label, quiet, None

    def __call__(self, done: int, total: int) -> None:
        if self.quiet:
            return
        try:
            from tqdm import tqdm
        except ImportError:
            if done == total or done % 50 == 0:
                print(f"{self.label}: {done}/{total}", file=sys.stderr)
            return
        if self.bar is None:
            self.bar = tqdm(total=total, desc=self.label, unit="tensor")
        self.bar.update(done - self.bar.n)
        if done == total:
            self.bar.close()


def _write(path: str, ckpt: OfficialCheckpoint, mapping: dict[str, str], dtype, metadata, label, quiet):
    tensors = ckpt.tensors
    # shard by shard, and in file order inside a shard: each shard is opened once and read front to back
    order = {f: i for i, f in enumerate(tensors.files_in_order())}
    names = sorted(mapping, key=lambda n: (order[tensors.where[mapping[n]]], tensors.info[mapping[n]]["data_offsets"][0], n))
    layout = [(n, target_dtype(n, tensors.shape(mapping[n]), tensors.dtype(mapping[n]), dtype), tensors.shape(mapping[n]))
              for n in names]
    planned = {n: d for n, d, _ in layout}
    write_streaming(path, layout, lambda n: tensors.get(mapping[n]).to(planned[n]), metadata, _Progress(label, quiet))


def convert(src: str, expert_out: str | None = None, base_out: str | None = None,
            dtype: str | None = None, quiet: bool = False) -> OfficialCheckpoint:
    ckpt = open_official(src, mmap=False)  # plain reads: RAM stays at about one tensor (safetensors_io)
    torch_dtype = DTYPES[dtype] if dtype else None
    base_map, expert_map = key_map(ckpt)
    if base_out and not base_map:
        raise VAPFormatError(f"'{src}' holds only expert tensors: there is no base to write with --base.")
    for out in (expert_out, base_out):
        if out and os.path.isdir(out):
            raise VAPError(f"'{out}' is a folder: give a file name ending in .safetensors.")
    if expert_out:
        meta = expert_metadata(ckpt.variant, ckpt.expert_blocks, ckpt.config)
        _write(expert_out, ckpt, expert_map, torch_dtype, meta, "expert", quiet)
    if base_out:
        meta = {}
        if ckpt.variant == WAN:
            meta["config"] = json.dumps({"transformer": wan_keys.native_transformer_config(ckpt.config)})
        else:
            from .cogvideox import keys as cog_keys
            meta.update(cog_keys.base_metadata(ckpt.config))
        _write(base_out, ckpt, base_map, torch_dtype, meta, "base", quiet)
    return ckpt


def check_base(src: str, user_base: str, sample: int = 16) -> dict:
    """Compare a sample of base tensors inside the official VAP checkpoint with a user's native base file."""
    ckpt = open_official(src, mmap=False)
    base_map, _ = key_map(ckpt)
    if not base_map:
        raise VAPFormatError(f"'{src}' holds only expert tensors: there is no base to compare with.")
    user = LazyTensors([user_base], mmap=False)
    prefix = next((p for p in ("model.diffusion_model.", "diffusion_model.", "") if any(k.startswith(p) and k[len(p):] in base_map for k in user.keys())), None)
    if prefix is None:
        raise VAPFormatError(f"'{user_base}' shares no tensor names with the {ckpt.variant} base: it is not a native "
                             f"{ckpt.variant} checkpoint.")
    names = sorted(base_map)
    step = max(1, len(names) // sample)
    rows, worst = [], 0.0
    for name in names[::step][:sample]:
        theirs = user.get(prefix + name) if prefix + name in user else None
        ours = ckpt.tensors.get(base_map[name]).float()
        if theirs is None or tuple(theirs.shape) != tuple(ours.shape):
            rows.append({"tensor": name, "status": "missing or different shape"})
            worst = float("inf")
            continue
        theirs = theirs.float()
        rel = ((theirs - ours).norm() / ours.norm().clamp_min(1e-12)).item()
        worst = max(worst, rel)
        rows.append({"tensor": name, "relative_error": rel})
    # 1e-2 allows the rounding of bf16 / fp16 copies; fp8 copies land near 5e-2
    return {"compared": len(rows), "worst_relative_error": worst, "matches": worst < 0.06, "rows": rows}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vap_core.convert", description=__doc__.split("\n\n")[0])
    parser.add_argument("src", help="official VAP model folder, its transformer/ folder, or one safetensors file")
    parser.add_argument("--expert", help="write the expert here (put it in ComfyUI/models/vap/)")
    parser.add_argument("--base", help="also write the base in ComfyUI's native layout (models/diffusion_models/)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), help="output dtype (default: as stored)")
    parser.add_argument("--check-base", metavar="FILE", help="compare your base checkpoint with the base inside SRC")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    if not (args.expert or args.base or args.check_base):
        parser.error("nothing to do: give --expert, --base and/or --check-base")
    try:
        if args.expert or args.base:
            ckpt = convert(args.src, args.expert, args.base, args.dtype, args.quiet)
            print(f"{ckpt.variant} VAP checkpoint, expert blocks {ckpt.expert_blocks}")
            for label, path in (("expert", args.expert), ("base", args.base)):
                if path:
                    print(f"wrote {label}: {path}")
        if args.check_base:
            report = check_base(args.src, args.check_base)
            for row in report["rows"]:
                print(f"  {row['tensor']}: {row.get('relative_error', row.get('status'))}")
            verdict = "MATCHES" if report["matches"] else "DOES NOT MATCH"
            print(f"{args.check_base} {verdict} the base inside {args.src} "
                  f"(worst relative error {report['worst_relative_error']:.3g} over {report['compared']} tensors)")
            if not report["matches"]:
                return 3
    except VAPError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
