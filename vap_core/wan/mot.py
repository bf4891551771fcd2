"""Mixture-of-Transformers forward for Wan2.1 VAP on ComfyUI's native ``WanModel``.

Target tokens run through the base model's own modules exactly as ``WanModel.forward_orig`` runs
them. Reference tokens get the expert's embeddings; in every expert block the two streams share
one joint self-attention (``optimized_attention``, so sage/flash/pytorch backends apply) and keep
their own output projection, cross-attention, FFN and modulation. Blocks without an expert run the
plain base block on the target and leave the reference untouched. Only the target is decoded.
"""
from __future__ import annotations

import torch

import comfy.ldm.common_dit
import comfy.model_management
from comfy.ldm.flux.math import apply_rope1
from comfy.ldm.modules.attention import optimized_attention
from comfy.ldm.wan.model import WanModel, sinusoidal_embedding_1d

# Whether the host's WanModel runs ``transformer_options["patches"]["double_block"]`` after each block (newer
# ComfyUI does; 0.25 does not): the MoT forward does the same as the host, so VAP and plain steps agree.
HOST_RUNS_BLOCK_PATCHES = "patches" in WanModel.forward_orig.__code__.co_consts

# The official pipeline feeds the clean reference with the constant timestep 1 (0..1000 scale).
REFERENCE_TIMESTEP = 1.0


def _modulation(block, e):
    """Six [B, 1, C] modulation vectors of a Wan block for a [B, 1, 6, C] time projection."""
    return (comfy.model_management.cast_to(block.modulation, dtype=e.dtype, device=e.device).unsqueeze(0) + e).unbind(2)


def _heads_first(x, heads, head_dim):
    """[B, S, heads*D] -> [B, heads, S, D] (a view)."""
    return x.view(x.shape[0], x.shape[1], heads, head_dim).transpose(1, 2)


def _rotated(norm, proj, x, freqs, heads, head_dim):
    """Normed, rotated projection of ``x``, heads first [B, heads, S, D] (a view)."""
    b, s = x.shape[:2]
    return apply_rope1(norm(proj(x)).view(b, s, heads, head_dim), freqs).transpose(1, 2)


def reference_qkv(expert_block, r, e_ref, freqs_ref, with_query=True):
    """Reference q (optional), k, v [B, heads, S, D] of an expert block for reference tokens ``r``."""
    mr = _modulation(expert_block, e_ref)
    attn = expert_block.self_attn
    rn = torch.addcmul(mr[0], expert_block.norm1(r), 1 + mr[1])
    q = _rotated(attn.norm_q, attn.q, rn, freqs_ref, attn.num_heads, attn.head_dim) if with_query else None
    k = _rotated(attn.norm_k, attn.k, rn, freqs_ref, attn.num_heads, attn.head_dim)
    return q, k, _heads_first(attn.v(rn), attn.num_heads, attn.head_dim)


def _rows_equal(*tensors) -> bool:
    """Whether every tensor's rows (dim 0) are identical (a batch-1 tensor trivially is)."""
    return all(all(torch.equal(t[0], row) for row in t[1:]) for t in tensors)


def attention_rows(x, e, r, transformer_options):
    """How the joint self-attention of a block walks the batch: a list of row slices of ``x``.

    - ``[0:1]`` when every row carries the same target tokens, modulation and reference (ComfyUI's batched CFG
      in an expert block 0: cond and uncond only differ by their texts, which enter after the self-attention):
      the self-attention of both streams runs once and is broadcast, as it gives the same rows.
    - one slice per row otherwise: the joint key/value buffers hold one row at a time (the memory of a
      batch-1 call, the same arithmetic).
    - all rows at once when an ``attn1_patch`` or an attention override is installed: those may read the whole
      batch (e.g. by ``cond_or_uncond``), so they get it as the host's own blocks give it."""
    b = x.shape[0]
    if transformer_options.get("patches", {}).get("attn1_patch") or transformer_options.get("optimized_attention_override"):
        return [slice(0, b)]
    if b > 1 and _rows_equal(x, e, r):
        return [slice(0, 1)]
    return [slice(i, i + 1) for i in range(b)]


def _rows(t, g):
    """Rows ``g`` of ``t``, or ``t`` itself when it has batch 1 (shared by every row)."""
    return t if t.shape[0] == 1 else t[g]


def _gather(dest, rows, g, total):
    """``rows`` put at rows ``g`` of a [total, ...] result (``rows`` itself when it is the whole result).
    Assignment rather than ``out=``: sampling may run with autograd on, which ``out=`` refuses."""
    if rows.shape[0] == total:
        return rows
    if dest is None:
        dest = rows.new_empty((total,) + rows.shape[1:])
    dest[g] = rows
    return dest


def joint_block(block, expert_block, x, r, e, e_ref, freqs, freqs_ref, context, context_img_len,
                ref_context, ref_context_img_len, transformer_options, update_reference=True):
    """One MoT block: base ``block`` on target ``x``, ``expert_block`` on reference ``r``.

    The joint self-attention runs as two calls over the same joint keys/values (target queries, then
    reference queries): the same softmax rows as one call, without a joint query or output buffer. It walks the
    batch as ``attention_rows`` says (rows shared by cond and uncond once, else row by row); cross-attention and
    FFN run batched. ``r`` may have batch 1 for a reference shared by cond and uncond. ``update_reference=False``
    (the last expert block, whose reference output nothing reads) skips the reference queries and everything
    after the attention for the reference."""
    b, s = x.shape[:2]
    x, r = x.contiguous(), r.contiguous()
    groups = attention_rows(x, e, r, transformer_options)
    rows_out = groups[-1].stop  # 1 when the rows are shared, else b
    mx = _modulation(block, e)
    mr = _modulation(expert_block, e_ref)
    attn, eattn = block.self_attn, expert_block.self_attn
    heads, head_dim = attn.num_heads, attn.head_dim
    patches = transformer_options.get("patches", {})
    # a reference shared by every row (batch 1): its q/k/v once for all groups
    ref_qkv = reference_qkv(expert_block, r, e_ref, freqs_ref, with_query=update_reference) if r.shape[0] == 1 else None
    x_sa = r_sa = None  # both streams after the self-attention, filled group by group
    for g in groups:
        n = g.stop - g.start
        if ref_qkv is None:
            qr, kr, vr = reference_qkv(expert_block, _rows(r, g), e_ref, freqs_ref, with_query=update_reference)
        else:
            qr, kr, vr = ref_qkv
            if g is groups[-1]:
                ref_qkv = None  # freed with this group's references
        xn = torch.addcmul(_rows(mx[0], g), block.norm1(x[g]), 1 + _rows(mx[1], g))
        # joint keys/values filled stream by stream (one projection alive at a time, no torch.cat copies), heads
        # first: attention kernels read them contiguously (CPU SDPA on [B, S, heads*D] views was measured ~15%
        # slower, bench/README.md)
        k_all = x.new_empty((n, heads, s + kr.shape[2], head_dim))
        v_all = torch.empty_like(k_all)
        k_all[:, :, s:] = kr
        v_all[:, :, s:] = vr
        del kr, vr
        fg = _rows(freqs, g)
        k_all[:, :, :s] = _rotated(attn.norm_k, attn.k, xn, fg, heads, head_dim)
        v_all[:, :, :s] = _heads_first(attn.v(xn), heads, head_dim)
        q = _rotated(attn.norm_q, attn.q, xn, fg, heads, head_dim).contiguous()
        del xn
        out = optimized_attention(q, k_all, v_all, heads=heads, skip_reshape=True, transformer_options=transformer_options)
        for p in patches.get("attn1_patch", ()):
            # as WanSelfAttention: the target's attention output, its rotated q and k [B, S, heads, D]
            out = p({"x": out, "q": q.transpose(1, 2), "k": k_all[:, :, :s].transpose(1, 2),
                     "transformer_options": transformer_options})
        del q
        x_sa = _gather(x_sa, torch.addcmul(x[g], attn.o(out), _rows(mx[2], g)), g, rows_out)
        del out
        if update_reference:
            out_r = optimized_attention(qr.expand(n, -1, -1, -1).contiguous(), k_all, v_all, heads=heads,
                                        skip_reshape=True, transformer_options=transformer_options)
            del k_all, v_all
            r_sa = _gather(r_sa, torch.addcmul(_rows(r, g), eattn.o(out_r), mr[2]), g, rows_out)
            del out_r
        else:
            del k_all, v_all
        del qr
    del x
    if rows_out < b:  # shared rows part ways at their texts
        x_sa = x_sa.expand(b, -1, -1)
    x = x_sa + block.cross_attn(block.norm3(x_sa), context, context_img_len=context_img_len,
                                transformer_options=transformer_options)
    del x_sa
    for p in patches.get("attn2_patch", ()):
        x = p({"x": x, "transformer_options": transformer_options})
    x = torch.addcmul(x, block.ffn(torch.addcmul(mx[3], block.norm2(x), 1 + mx[4])), mx[5])
    if not update_reference:
        return x, r

    r = r_sa.expand(b, -1, -1) if r_sa.shape[0] < b else r_sa
    del r_sa
    r = r + expert_block.cross_attn(expert_block.norm3(r), ref_context, context_img_len=ref_context_img_len,
                                    transformer_options=transformer_options)
    r = torch.addcmul(r, expert_block.ffn(torch.addcmul(mr[3], expert_block.norm2(r), 1 + mr[4])), mr[5])
    return x, r


def _time_projection(module_owner, t, dtype):
    e = module_owner.time_embedding(sinusoidal_embedding_1d(module_owner.freq_dim, t.flatten()).to(dtype=dtype))
    e = e.reshape(t.shape[0], -1, e.shape[-1])
    return e, module_owner.time_projection(e).unflatten(2, (6, module_owner.dim))


def shared_rows(ref_latent):
    """``ref_latent`` with batch 1 when every row is the same video (cond and uncond carry the same reference:
    it is embedded once and broadcast until the streams differ)."""
    if ref_latent.shape[0] > 1 and all(torch.equal(ref_latent[0], row) for row in ref_latent[1:]):
        return ref_latent[:1]
    return ref_latent


def reference_video(wan, expert, ref_latent, dtype, transformer_options, ref_timestep=REFERENCE_TIMESTEP):
    """What depends on the reference video only (not on its caption, the target or the step): tokens, RoPE
    table (temporal positions -F..-1), modulation. (The first expert block's reference q/k/v are constant too,
    but holding them costs three token-sized tensors for the whole run to save ~0.3% of a step's FLOPs at
    release size; they are recomputed.)"""
    ref_latent = shared_rows(ref_latent)
    ref = comfy.ldm.common_dit.pad_to_patch_size(ref_latent, wan.patch_size)
    f, h, w = ref.shape[2:]
    freqs_ref = wan.rope_encode(f, h, w, t_start=-f, device=ref.device, dtype=dtype, transformer_options=transformer_options)
    r = expert.patch_embedding(ref.float()).to(dtype).flatten(2).transpose(1, 2)
    t_ref = torch.full((1,), float(ref_timestep), device=ref.device, dtype=torch.float32)
    _, e_ref = _time_projection(expert, t_ref, dtype)
    return {"latent": ref_latent, "tokens": r, "freqs": freqs_ref, "e": e_ref}


def reference_stream(wan, expert, ref_latent, ref_context, ref_clip_fea, dtype, transformer_options,
                     ref_timestep=REFERENCE_TIMESTEP, video=None):
    """Everything about the reference that does not depend on the target or the step: ``reference_video``
    (given as ``video`` when already computed for the same video) plus the cross-attention context."""
    if video is None:
        video = reference_video(wan, expert, ref_latent, dtype, transformer_options, ref_timestep)
    ctx = expert.text_embedding(ref_context)
    ctx_img_len = None
    if ref_clip_fea is not None:
        ctx = torch.cat([expert.img_emb(ref_clip_fea), ctx], dim=1)
        ctx_img_len = ref_clip_fea.shape[-2]
    return {**video, "context": ctx, "context_img_len": ctx_img_len}


def vap_forward(wan, expert, x, timestep, context, clip_fea, transformer_options, ref):
    """Target prediction of the MoT model. ``ref`` comes from ``reference_stream``."""
    bs, c, t, h, w = x.shape
    x = comfy.ldm.common_dit.pad_to_patch_size(x, wan.patch_size)
    freqs = wan.rope_encode(t, h, w, device=x.device, dtype=x.dtype, transformer_options=transformer_options)

    x_input = x
    x = wan.patch_embedding(x.float()).to(x.dtype)
    grid_sizes = x.shape[2:]
    transformer_options["grid_sizes"] = grid_sizes
    # contiguous now, while nothing else is alive: the first block would copy it anyway (its norms and
    # projections want rows) while the strided original is still referenced here
    x = x.flatten(2).transpose(1, 2).contiguous()
    e, e0 = _time_projection(wan, timestep, x.dtype)

    context = wan.text_embedding(context)
    context_img_len = None
    if clip_fea is not None:
        if wan.img_emb is not None:
            context = torch.concat([wan.img_emb(clip_fea), context], dim=1)
        context_img_len = clip_fea.shape[-2]

    r = ref["tokens"]
    callback = transformer_options.get("vap_block_callback")
    # nothing reads the reference after the last expert block (only the target is decoded), unless a
    # callback inspects every block's streams
    last_update = expert.expert_blocks[-1] if callback is None else None
    blocks_replace = transformer_options.get("patches_replace", {}).get("dit", {})
    block_patches = transformer_options.get("patches", {}).get("double_block", ()) if HOST_RUNS_BLOCK_PATCHES else ()
    transformer_options["total_blocks"] = len(wan.blocks)
    transformer_options["block_type"] = "double"
    for i, block in enumerate(wan.blocks):
        transformer_options["block_index"] = i
        expert_block = expert.block(i)
        if expert_block is not None:
            def joint_wrap(args, block=block, expert_block=expert_block, update_reference=i != last_update):
                # the target's inputs come from ``args`` (a replacement may change them); the reference stream is
                # this block's own: it advances when the replacement runs the original block, else it stays
                nonlocal r
                out, r = joint_block(block, expert_block, args["img"], r, args["vec"], ref["e"], args["pe"],
                                     ref["freqs"], args["txt"], context_img_len, ref["context"],
                                     ref["context_img_len"], args["transformer_options"],
                                     update_reference=update_reference)
                return {"img": out}
            args = {"img": x, "txt": context, "vec": e0, "pe": freqs, "transformer_options": transformer_options}
            replace = blocks_replace.get(("double_block", i))
            x = (joint_wrap(args) if replace is None else replace(args, {"original_block": joint_wrap}))["img"]
            del args  # it holds this block's input: not kept alive through the next blocks
        elif ("double_block", i) in blocks_replace:
            def block_wrap(args, block=block):
                return {"img": block(args["img"], context=args["txt"], e=args["vec"], freqs=args["pe"],
                                     context_img_len=context_img_len, transformer_options=args["transformer_options"])}
            x = blocks_replace[("double_block", i)](
                {"img": x, "txt": context, "vec": e0, "pe": freqs, "transformer_options": transformer_options},
                {"original_block": block_wrap})["img"]
        else:
            x = block(x, e=e0, freqs=freqs, context=context, context_img_len=context_img_len,
                      transformer_options=transformer_options)
        for p in block_patches:
            x = p({"img": x, "x": x_input, "vec": e, "block_index": i, "img_offset": 0,
                   "transformer_options": transformer_options})["img"]
        if callback is not None:
            callback(i, x, r)

    x = wan.head(x, e)
    return wan.unpatchify(x, grid_sizes)[:, :, :t, :h, :w]
