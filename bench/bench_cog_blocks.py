"""One CogVideoX block at ``bench_cog.py``'s mid size, pack vs official, to locate a per-step difference.

    python bench/bench_cog_blocks.py [--repeats 3] [--profile] [--config mid]

Batch 2 (cond + uncond), 226 text + 4096 video tokens per stream, same weights (the mid checkpoint of
``bench_cog.py``), same inputs and RoPE tables (``cog_mot.rope_table``, the pipeline's):
  comfy block         ComfyUI's ``CogVideoXBlock`` (what the base and the pack run in blocks without an expert)
  official block      the official ``CogVideoXBlock`` without a reference
  pack joint_block    ``cog_mot.joint_block``: base block + expert block, one joint attention over 2 x 4322 tokens
  pack joint_block, last   the same as the pack runs its LAST expert block (``update_reference=False``: the
                      reference lends keys and values only; nothing reads its output)
  official MoT block  the official block with its ``_mot_ref`` twin (``CogVideoXAttnMOTProcessor2_0``)
Interleaved repeats after one warm-up (``common.time_steps``); ``--profile`` adds torch.profiler tables of the
two joint blocks. Not a test: nothing asserts; about 3 minutes on 2 cores (mid).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_cog  # noqa: E402
import common  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="mid", choices=list(bench_cog.CONFIGS))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--attention", choices=("sdpa", "comfy-default"), default="sdpa")
    ap.add_argument("--official-src", default=os.environ.get("VAP_OFFICIAL_SRC"))
    opts = ap.parse_args()
    import torch
    from safetensors.torch import load_file
    pack, backend = bench_cog.setup_host(opts.attention, None)
    official_cls, where = bench_cog.official_class(opts.official_src)
    if official_cls is None:
        raise SystemExit(f"the official model is needed: {where}")
    with tempfile.TemporaryDirectory(prefix="vap_bench_blocks_") as root:
        info = bench_cog.prepare_checkpoint(pack, opts.config, root)
        cfg = info["config"]
        base, expert, _, _ = bench_cog.load_comfy(pack, info)
        official = official_cls(**{k: v for k, v in cfg.items() if not k.startswith("_")})
        official.load_state_dict(load_file(info["paths"]["official_file"]), strict=True)
        official.eval()
    cog, em, mot = base.model.diffusion_model, expert.module, pack.vap_core.cogvideox.mot
    first, plain = em.expert_blocks[0], next(i for i in range(len(cog.blocks)) if em.block(i) is None)
    frames, h, w = bench_cog.CONFIGS[opts.config]["latent"]
    p, c, text = cfg["patch_size"], cog.dim, cfg["max_text_seq_length"]
    grid = (h // p, w // p, cfg["sample_height"] // p, cfg["sample_width"] // p)
    n_vid = frames * (h // p) * (w // p)
    g = torch.Generator().manual_seed(0)
    x, r = (torch.randn(2, n_vid, c, generator=g) for _ in range(2))
    t, rt = (torch.randn(2, text, c, generator=g) for _ in range(2))
    emb, emb_r = (torch.randn(2, cfg["time_embed_dim"], generator=g) for _ in range(2))
    rope = mot.rope_table(cfg["attention_head_dim"], frames, *grid)
    rope_r = mot.rope_table(cfg["attention_head_dim"], frames, *grid, num_refs=1)
    ob = official.transformer_blocks
    fns = {
        "comfy block": lambda: cog.blocks[plain](hidden_states=x, encoder_hidden_states=t, temb=emb,
                                                 image_rotary_emb=rope, transformer_options={}),
        "official block": lambda: ob[plain](hidden_states=x, encoder_hidden_states=t, temb=emb, image_rotary_emb=rope),
        "pack joint_block": lambda: mot.joint_block(cog.blocks[first], em.block(first), x, t, r, rt, emb, emb_r,
                                                    rope, rope_r, {}),
        "pack joint_block, last": lambda: mot.joint_block(cog.blocks[first], em.block(first), x, t, r, rt, emb, emb_r,
                                                          rope, rope_r, {}, update_reference=False),
        "official MoT block": lambda: ob[first](hidden_states=x, encoder_hidden_states=t, temb=emb,
                                                image_rotary_emb=rope, hidden_states_mot_ref=r,
                                                encoder_hidden_states_mot_ref=rt, temb_mot_ref=emb_r,
                                                image_rotary_emb_mot_ref=rope_r),
    }
    print(f"{opts.config}: batch 2, {text}+{n_vid} tokens per stream, blocks {plain} (plain) and {first} (expert), "
          f"ComfyUI attention {backend}", flush=True)
    with torch.inference_mode():
        timing, outs = common.time_steps({n: (lambda k, f=f: f()[0]) for n, f in fns.items()}, opts.repeats)
        print(f"max abs target video: comfy - official block {(outs['comfy block'] - outs['official block']).abs().max().item():.3g}, "
              f"pack - official joint block {(outs['pack joint_block'] - outs['official MoT block']).abs().max().item():.3g}")
        for n, m in timing.items():
            print(f"{n:24s} median {m['median']:.3f}s  min {m['min']:.3f}  max {m['max']:.3f}  CPU {m['cpu']['median']:.2f}s",
                  flush=True)
        print(f"comfy/official block {timing['comfy block']['median'] / timing['official block']['median']:.2f}   "
              f"pack/official joint block {timing['pack joint_block']['median'] / timing['official MoT block']['median']:.2f}")
        if opts.profile:
            tables = common.profile_steps({n: (lambda k, f=f: f()) for n, f in fns.items() if n in
                                           ("pack joint_block", "official MoT block")}, top=15)
            for n, tb in tables.items():
                print(f"\n--- profile {n}\n{tb['by_op']}", flush=True)


if __name__ == "__main__":
    main()
