"""Mixture-of-Transformers forward for CogVideoX-I2V VAP on ComfyUI's native ``CogVideoXTransformer3DModel``.

Target tokens run through the base model's own modules (patch embedding, time embedding, blocks, output
head). The reference stream gets the expert's patch embedding (per reference, with the expert's own
positional table) and the expert's time embedding of the *target* timestep. In every expert block the
sequence [target text, target video, reference text, reference video] goes through one joint attention
(ComfyUI's ``optimized_attention``, so sage/flash/pytorch backends apply); each stream keeps its own
projections, q/k norms, output projection, FFN and modulation. Blocks without an expert run the plain
base block on the target and leave the reference untouched. Only the target is decoded.

Positions follow the official pipeline and transformer, not ComfyUI's CogVideoX code, which differs in three
places (docs/COGVIDEOX.md): RoPE is built here from the pipeline's formula (ComfyUI scales spatial positions
by ``spatial_interpolation_scale``, and its detection switches RoPE off when a learned table exists); a
frame count other than the learned table's gets the official recomputed sincos table (ComfyUI slices the
learned one); a resolution other than the learned table's is refused, as the official model does.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

import comfy.ldm.common_dit
from comfy.ldm.modules.attention import optimized_attention

from .expert import native_cogvideox
from ..errors import VAPInputError

MAX_REFERENCES = 3

_native_module = None


def _native():
    """``native_cogvideox()``, imported once for the forward: an import inside the step breaks torch.compile's graph
    (the load and apply checks keep importing it each time)."""
    global _native_module
    if _native_module is None:
        _native_module = native_cogvideox()
    return _native_module


# ---- positions ------------------------------------------------------------------------------------------

def crop_region(grid_h: int, grid_w: int, base_h: int, base_w: int):
    """The pipeline's resize-crop region of a (grid_h, grid_w) grid inside the base (training) grid."""
    if grid_h / grid_w > base_h / base_w:
        height, width = base_h, int(round(base_h / grid_h * grid_w))
    else:
        height, width = int(round(base_w / grid_w * grid_h)), base_w
    top, left = int(round((base_h - height) / 2.0)), int(round((base_w - width) / 2.0))
    return (top, left), (top + height, left + width)


def _rope_axis(dim: int, positions: torch.Tensor):
    """(cos, sin) [len, dim] of one axis, each frequency repeated for its (real, imag) channel pair."""
    inv_freq = 1.0 / (10000 ** (torch.arange(0, dim, 2, dtype=torch.float32, device=positions.device)[: dim // 2] / dim))
    angles = torch.outer(positions, inv_freq)
    return angles.cos().repeat_interleave(2, dim=1), angles.sin().repeat_interleave(2, dim=1)


def rope_table(head_dim: int, frames: int, grid_h: int, grid_w: int, base_h: int, base_w: int,
               num_refs: int = 0, device=None):
    """CogVideoX 1.0 RoPE table (cos, sin), each [T*grid_h*grid_w, head_dim], float32, as the official pipeline
    builds it. ``num_refs`` > 0: the reference table for ``num_refs`` references of ``frames`` frames each,
    temporal positions -num_refs*frames .. -1 in concatenation order, spatial positions as the target's."""
    (top, left), (bottom, right) = crop_region(grid_h, grid_w, base_h, base_w)
    pos_h = torch.linspace(top, bottom * (grid_h - 1) / grid_h, grid_h, device=device, dtype=torch.float32)
    pos_w = torch.linspace(left, right * (grid_w - 1) / grid_w, grid_w, device=device, dtype=torch.float32)
    pos_t = torch.linspace(0, frames * (frames - 1) / frames, frames, device=device, dtype=torch.float32)
    if num_refs > 0:
        span = frames * (frames - 1) / frames + 1
        frames = frames * num_refs
        pos_t = torch.linspace(-num_refs * span, -1, frames, device=device, dtype=torch.float32)
    # head_dim split: 1/4 temporal, 3/8 height, 3/8 width
    parts = [_rope_axis(head_dim // 4, pos_t), _rope_axis(head_dim // 8 * 3, pos_h), _rope_axis(head_dim // 8 * 3, pos_w)]
    tables = []
    for which in (0, 1):
        t, h, w = (p[which] for p in parts)
        grid = torch.cat([t[:, None, None].expand(-1, grid_h, grid_w, -1),
                          h[None, :, None].expand(frames, -1, grid_w, -1),
                          w[None, None, :].expand(frames, grid_h, -1, -1)], dim=-1)
        tables.append(grid.reshape(frames * grid_h * grid_w, -1))
    return tables[0], tables[1]


def _sincos(dim: int, positions: torch.Tensor) -> torch.Tensor:
    """[len, dim] = [sin | cos] of positions times 10000^(-i/(dim/2)), in float64 like the official code."""
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64, device=positions.device) / (dim / 2.0))
    angles = torch.outer(positions.reshape(-1).double(), omega)
    return torch.cat([angles.sin(), angles.cos()], dim=1)


def sincos_table(dim: int, frames: int, grid_h: int, grid_w: int, spatial_scale: float, temporal_scale: float,
                 device=None) -> torch.Tensor:
    """The official 3-D sincos positional table [frames*grid_h*grid_w, dim] (float64): per token
    [temporal (dim/4) | width (3dim/8) | height (3dim/8)]. The official model recomputes it whenever the
    frame count differs from its learned table (ComfyUI's builder splits 1/3 : 2/3 and orders cos|sin)."""
    spatial, temporal = 3 * dim // 4, dim // 4
    ys = torch.arange(grid_h, dtype=torch.float32, device=device) / spatial_scale
    xs = torch.arange(grid_w, dtype=torch.float32, device=device) / spatial_scale
    ts = torch.arange(frames, dtype=torch.float32, device=device) / temporal_scale
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    # the official 2-D helper encodes its first grid channel (the width coordinate) first
    space = torch.cat([_sincos(spatial // 2, xx), _sincos(spatial // 2, yy)], dim=1)          # [h*w, 3dim/4]
    time = _sincos(temporal, ts)                                                               # [frames, dim/4]
    table = torch.cat([time[:, None].expand(-1, grid_h * grid_w, -1),
                       space[None].expand(frames, -1, -1)], dim=-1)
    return table.reshape(frames * grid_h * grid_w, dim)


def video_positions(table, layout, dim: int, frames: int, height: int, width: int, patch: int, device, dtype):
    """Positional embedding [1, frames*h*w, dim] added to the video tokens, or None (RoPE-only models).

    ``table``: a learned joint table [1, text + N, dim] (zeros on the text part) or None."""
    if layout.use_rotary_positional_embeddings and not layout.use_learned_positional_embeddings:
        return None
    if layout.use_learned_positional_embeddings and (height, width) != (layout.sample_height, layout.sample_width):
        raise VAPInputError(
            f"this CogVideoX has a learned positional embedding for {layout.sample_width * 8}x{layout.sample_height * 8} "
            f"video only (latent {layout.sample_width}x{layout.sample_height}), got {width * 8}x{height * 8}. Resize the "
            "target and the reference videos to that size (CogVideoX-5b-I2V: 720x480), as the official model requires.")
    grid_h, grid_w = height // patch, width // patch
    pre_compression = (frames - 1) * layout.temporal_compression_ratio + 1
    if layout.use_learned_positional_embeddings and pre_compression == layout.sample_frames:
        start = layout.max_text_seq_length
        pos = table[:, start:start + frames * grid_h * grid_w]
    else:
        pos = sincos_table(dim, frames, grid_h, grid_w, layout.spatial_interpolation_scale,
                           layout.temporal_interpolation_scale, device=device)[None]
    return pos.to(device=device, dtype=dtype)


# ---- embeddings -----------------------------------------------------------------------------------------

def embed(patch_embed, text, video, pos):
    """(text tokens, video tokens) of one patch embedding; ``video`` is [B, F, C, H, W] (the official layout).

    The projections compute in the inputs' dtype (the model's compute dtype), as the official model does: with the
    float32 upcast of a bf16 release every layer runs in float32. ComfyUI's ``CogVideoXPatchEmbed.forward`` casts
    the inputs to the stored weight dtype instead, which on bf16 files with float32 compute rounds the captions
    and latents to bf16 (2e-4 per call). Layers that cast their weights (comfy.ops manual_cast, fp8) take the
    input as it is; only a layer that cannot cast (weights in another dtype, no cast) gets its weight dtype."""
    dtype = text.dtype

    def compute(layer):
        weight = layer.weight.dtype
        casts = getattr(layer, "comfy_cast_weights", False) or weight.itemsize == 1
        return dtype if casts or weight == dtype else weight

    text = patch_embed.text_proj(text.to(compute(patch_embed.text_proj))).to(dtype)
    b, f, c, h, w = video.shape
    video = patch_embed.proj(video.reshape(-1, c, h, w).to(compute(patch_embed.proj))).to(dtype)
    video = video.view(b, f, *video.shape[1:]).flatten(3).transpose(2, 3).flatten(1, 2)
    if pos is not None:
        video = video + pos
    return text, video


def time_embedding(owner, timestep, dim, layout, dtype):
    """``owner``'s time embedding (the base model or the expert: same attribute names) of ``timestep``."""
    cog = _native()
    t = cog.get_timestep_embedding(timestep.flatten(), dim, layout.flip_sin_to_cos, layout.freq_shift).to(dtype=dtype)
    return owner.time_embedding_linear_2(owner.time_embedding_act(owner.time_embedding_linear_1(t)))


# ---- blocks ---------------------------------------------------------------------------------------------

def _rotated(x, text_len, rope, apply_rope):
    """x [B, heads, S, D] with its video tokens (after ``text_len``) rotated; the text stays."""
    if rope is None:
        return x
    return torch.cat([x[:, :, :text_len], apply_rope(x[:, :, text_len:], rope)], dim=2)


def _qkv(block, tokens, text_len, rope, apply_rope, queries=True):
    """(q, k, v) [B, heads, S, D] of one stream; q is None with ``queries=False``.

    Heads-first, so the joint tensors built from them are contiguous in the layout attention kernels read
    (CPU SDPA on [B, S, heads*D] views was measured ~15% slower, bench/README.md)."""
    b, s, _ = tokens.shape
    n, d = block.num_heads, block.head_dim
    k = _rotated(block.norm_k(block.k(tokens).view(b, s, n, d)).transpose(1, 2), text_len, rope, apply_rope)
    v = block.v(tokens).view(b, s, n, d).transpose(1, 2)
    q = None
    if queries:
        q = _rotated(block.norm_q(block.q(tokens).view(b, s, n, d)).transpose(1, 2), text_len, rope, apply_rope)
    return q, k, v


def _feed_forward(block, x, t, emb):
    nx, nt, gate, text_gate = block.norm2(x, t, emb)
    out = block.ff_out(F.gelu(block.ff_proj(torch.cat([nt, nx], dim=1)), approximate="tanh"))
    text_len = t.shape[1]
    return x + gate * out[:, text_len:], t + text_gate * out[:, :text_len]


def joint_block(block, expert_block, x, t, r, rt, emb, emb_ref, rope, rope_ref, transformer_options,
                update_reference=True):
    """One MoT block: base ``block`` on target (video ``x``, text ``t``), ``expert_block`` on the reference
    (video ``r``, text ``rt``), one attention over [t, x, rt, r].

    ``update_reference=False`` (the last expert block, whose reference output nothing reads): the reference
    only lends its keys and values; its queries, output projection and FFN are skipped and ``r``, ``rt`` are
    returned unchanged."""
    apply_rope = _native().apply_rotary_emb
    nx, nt, gate, text_gate = block.norm1(x, t, emb)
    nr, nrt, gate_r, text_gate_r = expert_block.norm1(r, rt, emb_ref)
    q, k, v = _qkv(block, torch.cat([nt, nx], dim=1), t.shape[1], rope, apply_rope)
    qr, kr, vr = _qkv(expert_block, torch.cat([nrt, nr], dim=1), rt.shape[1], rope_ref, apply_rope,
                      queries=update_reference)
    del nx, nt, nr, nrt
    queries = torch.cat([q, qr], dim=2) if update_reference else q.contiguous()
    joint = optimized_attention(queries, torch.cat([k, kr], dim=2), torch.cat([v, vr], dim=2),
                                heads=block.num_heads, skip_reshape=True, transformer_options=transformer_options)
    del q, k, v, qr, kr, vr, queries
    target_len = t.shape[1] + x.shape[1]
    att_t, att_x = block.attn_out(joint[:, :target_len]).split([t.shape[1], x.shape[1]], dim=1)
    if update_reference:
        att_rt, att_r = expert_block.attn_out(joint[:, target_len:]).split([rt.shape[1], r.shape[1]], dim=1)
        r, rt = r + gate_r * att_r, rt + text_gate_r * att_rt
        r, rt = _feed_forward(expert_block, r, rt, emb_ref)
    del joint
    x, t = x + gate * att_x, t + text_gate * att_t
    x, t = _feed_forward(block, x, t, emb)
    return x, t, r, rt


# ---- forward --------------------------------------------------------------------------------------------

def count_references(frames: int, text_len: int, ref_frames: int, ref_text_len: int, num_refs=None) -> int:
    """Number of references in a reference latent of ``ref_frames`` frames and a caption of ``ref_text_len``
    tokens, checked against the target's frames and caption length (as the official model slices them)."""
    if ref_frames % frames:
        raise VAPInputError(
            f"the reference latent has {ref_frames} frames, not a multiple of the target's {frames}: every reference "
            "video must have the target's frame count (select the same number of frames for references and target).")
    n = ref_frames // frames
    if num_refs is not None and int(num_refs) != n:
        raise VAPInputError(f"vap_num_refs says {int(num_refs)} references but the reference latent holds {n} "
                            f"({ref_frames} frames of {frames}). Encode the references again.")
    if not 1 <= n <= MAX_REFERENCES:
        raise VAPInputError(
            f"{n} reference videos given; CogVideoX VAP takes 1 to {MAX_REFERENCES} (the released model was trained "
            "with one, the official multi-reference recipe with up to three). Remove references.")
    if ref_text_len != n * text_len:
        raise VAPInputError(
            f"the reference captions have {ref_text_len} tokens; {n} reference(s) need {n} x {text_len} (one caption "
            "per reference, each as long as the target's). Encode one caption per reference.")
    return n


def _to_batch(tensor, batch):
    if tensor.shape[0] == batch:
        return tensor
    if tensor.shape[0] == 1:
        return tensor.expand(batch, *tensor.shape[1:])
    raise VAPInputError(f"reference batch {tensor.shape[0]} does not match the model batch {batch}.")


def _reference_tokens(expert, ref, ref_context, frames, text_len, n, pos_ref):
    """(reference text tokens [B, n*T, C], reference video tokens [B, n*L, C]): each reference through the
    expert's patch embedding on its own, with the expert's positional table (absolute frames 0..F-1)."""
    texts, videos = [], []
    for i in range(n):
        text, video = embed(expert.patch_embed, ref_context[:, i * text_len:(i + 1) * text_len],
                            ref[:, i * frames:(i + 1) * frames], pos_ref)
        if expert.ref_embeddings is not None:  # official: the last reference gets ref_0
            extra = expert.ref_embeddings[f"ref_{n - 1 - i}"].to(device=video.device, dtype=video.dtype)
            text, video = text + extra, video + extra
        texts.append(text)
        videos.append(video)
    return torch.cat(texts, dim=1), torch.cat(videos, dim=1)


def vap_forward(cog, expert, x, timestep, context, ref_latent, ref_context, transformer_options, num_refs=None):
    """Target prediction of the MoT model, ComfyUI layout in and out: ``x`` [B, C, F, H, W],
    ``ref_latent`` [B, C, n*F, H, W] (references concatenated on frames), ``ref_context`` [B, n*T, text_dim].

    ``ref_latent=None``: the official base model alone (its positions and RoPE, no reference stream), for
    steps outside the expert's active range; ComfyUI's own forward differs there (docs/COGVIDEOX.md)."""
    b, _, frames_in, h_in, w_in = x.shape
    p = cog.patch_size
    layout = expert.layout
    x = comfy.ldm.common_dit.pad_to_patch_size(x, (1, p, p)).permute(0, 2, 1, 3, 4)
    _, frames, _, height, width = x.shape
    text_len = context.shape[1]
    n = 0
    if ref_latent is not None:
        ref = comfy.ldm.common_dit.pad_to_patch_size(_to_batch(ref_latent, b), (1, p, p)).permute(0, 2, 1, 3, 4)
        ref_context = _to_batch(ref_context, b)
        if ref.shape[-2:] != x.shape[-2:]:
            raise VAPInputError(f"the reference latent is {ref.shape[-1]}x{ref.shape[-2]} but the target is "
                                f"{x.shape[-1]}x{x.shape[-2]}: resize the references to the target size.")
        n = count_references(frames, text_len, ref.shape[1], ref_context.shape[1], num_refs)

    emb = time_embedding(cog, timestep, cog.dim, layout, x.dtype)
    pos = video_positions(getattr(cog.patch_embed, "pos_embedding", None), layout, cog.dim, frames, height, width, p,
                          x.device, x.dtype)
    t, x = embed(cog.patch_embed, context, x, pos)
    r = rt = emb_ref = None
    if n:
        emb_ref = time_embedding(expert, timestep, expert.dim, layout, x.dtype)  # the target's timestep
        pos_ref = video_positions(expert.patch_embed.pos_embedding, layout, expert.dim, frames, height, width, p,
                                  x.device, x.dtype)
        rt, r = _reference_tokens(expert, ref, ref_context, frames, text_len, n, pos_ref)
        del ref

    rope = rope_ref = None
    if layout.use_rotary_positional_embeddings:
        grid = (height // p, width // p, layout.sample_height // p, layout.sample_width // p)
        rope = rope_table(cog.attention_head_dim, frames, *grid, device=x.device)
        if n:
            rope_ref = rope_table(cog.attention_head_dim, frames, *grid, num_refs=n, device=x.device)

    callback = transformer_options.get("vap_block_callback")
    # nothing reads the reference after the last expert block (only the target is decoded), unless a callback
    # inspects every block's streams
    last_update = expert.expert_blocks[-1] if n and callback is None else None
    # ``patches_replace["dit"][("double_block", i)]`` entries are honoured as in ComfyUI's MMDiT-style models (args
    # img/txt/vec/pe, the block returns img and txt), although ComfyUI 0.25's own CogVideoX forward reads none
    # (docs/HOST_INTEGRATION.md#composing-with-other-patches)
    blocks_replace = transformer_options.get("patches_replace", {}).get("dit", {})
    transformer_options["total_blocks"] = len(cog.blocks)
    transformer_options["block_type"] = "double"
    for i, block in enumerate(cog.blocks):
        transformer_options["block_index"] = i
        expert_block = expert.block(i) if n else None
        if expert_block is not None:
            def block_wrap(args, block=block, expert_block=expert_block, update_reference=i != last_update):
                # the target's inputs come from ``args``; the reference advances only when this runs
                nonlocal r, rt
                out_x, out_t, r, rt = joint_block(block, expert_block, args["img"], args["txt"], r, rt, args["vec"],
                                                  emb_ref, args["pe"], rope_ref, args["transformer_options"],
                                                  update_reference=update_reference)
                return {"img": out_x, "txt": out_t}
        else:
            def block_wrap(args, block=block):
                out_x, out_t = block(hidden_states=args["img"], encoder_hidden_states=args["txt"], temb=args["vec"],
                                     image_rotary_emb=args["pe"], transformer_options=args["transformer_options"])
                return {"img": out_x, "txt": out_t}
        args = {"img": x, "txt": t, "vec": emb, "pe": rope, "transformer_options": transformer_options}
        replace = blocks_replace.get(("double_block", i))
        out = block_wrap(args) if replace is None else replace(args, {"original_block": block_wrap})
        x, t = out["img"], out["txt"]
        if callback is not None:
            callback(i, x, r, t, rt)

    x = cog.proj_out(cog.norm_out(cog.norm_final(x), temb=emb))
    out = x.reshape(b, frames, height // p, width // p, -1, p, p)
    out = out.permute(0, 1, 4, 2, 5, 3, 6).flatten(5, 6).flatten(3, 4)
    return out.permute(0, 2, 1, 3, 4)[:, :, :frames_in, :h_in, :w_in]
