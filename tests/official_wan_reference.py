"""An independent plain-PyTorch statement of the official Wan MoT forward (docs/OFFICIAL_MODEL.md#wan-mot-forward), on the
official (diffusers) tensor names, float64 rotary math as upstream.

It shares no code with the pack. ``test_wan_reference_matches_golden`` proves it equals the official
model on the golden case; the pack is then compared with it on configs the golden set does not cover
(other layer counts, expert positions, widths and sizes).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _lin(sd, name, x):
    return F.linear(x, sd[f"{name}.weight"], sd.get(f"{name}.bias"))


def _rms(sd, name, x, eps):
    return x * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + eps).type_as(x) * sd[f"{name}.weight"]


def _ln(x, eps, sd=None, name=None):
    w = None if sd is None else sd[f"{name}.weight"]
    b = None if sd is None else sd[f"{name}.bias"]
    return F.layer_norm(x.float(), (x.shape[-1],), w, b, eps)


def _sinusoid(t, dim):
    half = dim // 2
    exponent = -math.log(10000) * torch.arange(half, dtype=torch.float32) / half
    emb = t[:, None].float() * torch.exp(exponent)[None]
    return torch.cat([torch.cos(emb), torch.sin(emb)], dim=-1)  # flip_sin_to_cos


def _freqs(dim, positions, theta=10000.0):
    inv = 1.0 / theta ** (torch.arange(0, dim, 2, dtype=torch.float64)[: dim // 2] / dim)
    return torch.polar(torch.ones(len(positions), dim // 2, dtype=torch.float64), torch.outer(positions.double(), inv))


def rope_table(head_dim, f, h, w, t_start=0):
    hw_dim = 2 * (head_dim // 6)
    t_dim = head_dim - 2 * hw_dim
    ft = _freqs(t_dim, torch.arange(t_start, t_start + f))
    fh = _freqs(hw_dim, torch.arange(h))
    fw = _freqs(hw_dim, torch.arange(w))
    grid = torch.cat([ft[:, None, None].expand(f, h, w, -1), fh[None, :, None].expand(f, h, w, -1),
                      fw[None, None, :].expand(f, h, w, -1)], dim=-1)
    return grid.reshape(1, 1, f * h * w, -1)


def _rotate(x, table):
    xc = torch.view_as_complex(x.double().unflatten(3, (-1, 2)))
    return torch.view_as_real(xc * table).flatten(3, 4).type_as(x)


def _heads(x, n):
    return x.unflatten(2, (n, -1)).transpose(1, 2)


def _qkv(sd, a, x, n, eps, table):
    q = _heads(_rms(sd, f"{a}.norm_q", _lin(sd, f"{a}.to_q", x), eps), n)
    k = _heads(_rms(sd, f"{a}.norm_k", _lin(sd, f"{a}.to_k", x), eps), n)
    return _rotate(q, table), _rotate(k, table), _heads(_lin(sd, f"{a}.to_v", x), n)


def _cross(sd, a, x, ctx, n, eps, text_len=512):
    img, txt = ctx[:, : ctx.shape[1] - text_len], ctx[:, ctx.shape[1] - text_len:]
    q = _heads(_rms(sd, f"{a}.norm_q", _lin(sd, f"{a}.to_q", x), eps), n)
    k = _heads(_rms(sd, f"{a}.norm_k", _lin(sd, f"{a}.to_k", txt), eps), n)
    v = _heads(_lin(sd, f"{a}.to_v", txt), n)
    ki = _heads(_rms(sd, f"{a}.norm_added_k", _lin(sd, f"{a}.add_k_proj", img), eps), n)
    vi = _heads(_lin(sd, f"{a}.add_v_proj", img), n)
    out = F.scaled_dot_product_attention(q, k, v) + F.scaled_dot_product_attention(q, ki, vi)
    return _lin(sd, f"{a}.to_out.0", out.transpose(1, 2).flatten(2))


def _ffn(sd, name, x):
    return _lin(sd, f"{name}.net.2", F.gelu(_lin(sd, f"{name}.net.0.proj", x), approximate="tanh"))


def _embed(sd, p, t, text, image, freq_dim):
    temb = _lin(sd, f"{p}.time_embedder.linear_2", F.silu(_lin(sd, f"{p}.time_embedder.linear_1", _sinusoid(t, freq_dim))))
    proj = _lin(sd, f"{p}.time_proj", F.silu(temb)).unflatten(1, (6, -1))
    txt = _lin(sd, f"{p}.text_embedder.linear_2", F.gelu(_lin(sd, f"{p}.text_embedder.linear_1", text), approximate="tanh"))
    img = _ln(image, 1e-5, sd, f"{p}.image_embedder.norm1")
    img = _lin(sd, f"{p}.image_embedder.ff.net.2", F.gelu(_lin(sd, f"{p}.image_embedder.ff.net.0.proj", img)))
    img = _ln(img, 1e-5, sd, f"{p}.image_embedder.norm2")
    return temb, proj, torch.cat([img, txt], dim=1)


def forward(sd, cfg, hidden_states, timestep, text, image, ref_hidden_states, ref_text, ref_image,
            ref_timestep=1.0, block_callback=None):
    n, eps = cfg["num_attention_heads"], cfg["eps"]
    head_dim = cfg["attention_head_dim"]
    b, _, f, h, w = hidden_states.shape
    pf, ph, pw = f, h // 2, w // 2
    fr = ref_hidden_states.shape[2]
    table = rope_table(head_dim, pf, ph, pw)
    table_ref = rope_table(head_dim, fr, ph, pw, t_start=-fr)

    x = F.conv3d(hidden_states, sd["patch_embedding.weight"], sd["patch_embedding.bias"], stride=(1, 2, 2)).flatten(2).transpose(1, 2)
    r = F.conv3d(ref_hidden_states, sd["patch_embedding_mot_ref.weight"], sd["patch_embedding_mot_ref.bias"],
                 stride=(1, 2, 2)).flatten(2).transpose(1, 2)
    temb, e, ctx = _embed(sd, "condition_embedder", timestep, text, image, cfg["freq_dim"])
    _, e_ref, ctx_ref = _embed(sd, "condition_embedder_mot_ref", torch.tensor([float(ref_timestep)]), ref_text, ref_image, cfg["freq_dim"])

    experts = set(cfg["block_idx_with_mot_ref"])
    for i in range(cfg["num_layers"]):
        p = f"blocks.{i}"
        m = (sd[f"{p}.scale_shift_table"] + e.float()).chunk(6, dim=1)
        xn = _ln(x, eps) * (1 + m[1]) + m[0]
        if i in experts:
            mr = (sd[f"{p}.scale_shift_table_mot_ref"] + e_ref.float()).chunk(6, dim=1)
            rn = _ln(r, eps) * (1 + mr[1]) + mr[0]
            q, k, v = _qkv(sd, f"{p}.attn1", xn, n, eps, table)
            qr, kr, vr = _qkv(sd, f"{p}.attn1_mot_ref", rn, n, eps, table_ref)
            o = F.scaled_dot_product_attention(torch.cat([q, qr], 2), torch.cat([k, kr], 2), torch.cat([v, vr], 2))
            o = o.transpose(1, 2).flatten(2)
            x = x + _lin(sd, f"{p}.attn1.to_out.0", o[:, : x.shape[1]]) * m[2]
            r = r + _lin(sd, f"{p}.attn1_mot_ref.to_out.0", o[:, x.shape[1]:]) * mr[2]
            x = x + _cross(sd, f"{p}.attn2", _ln(x, eps, sd, f"{p}.norm2"), ctx, n, eps)
            r = r + _cross(sd, f"{p}.attn2_mot_ref", _ln(r, eps, sd, f"{p}.norm2_mot_ref"), ctx_ref, n, eps)
            x = x + _ffn(sd, f"{p}.ffn", _ln(x, eps) * (1 + m[4]) + m[3]) * m[5]
            r = r + _ffn(sd, f"{p}.ffn_mot_ref", _ln(r, eps) * (1 + mr[4]) + mr[3]) * mr[5]
        else:
            q, k, v = _qkv(sd, f"{p}.attn1", xn, n, eps, table)
            x = x + _lin(sd, f"{p}.attn1.to_out.0", F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2)) * m[2]
            x = x + _cross(sd, f"{p}.attn2", _ln(x, eps, sd, f"{p}.norm2"), ctx, n, eps)
            x = x + _ffn(sd, f"{p}.ffn", _ln(x, eps) * (1 + m[4]) + m[3]) * m[5]
        if block_callback is not None:
            block_callback(i, x, r)

    shift, scale = (sd["scale_shift_table"] + temb.unsqueeze(1)).chunk(2, dim=1)
    x = _lin(sd, "proj_out", _ln(x, eps) * (1 + scale) + shift)
    c_out = cfg["out_channels"]
    x = x.reshape(b, pf, ph, pw, 1, 2, 2, c_out).permute(0, 7, 1, 4, 2, 5, 3, 6)
    return x.flatten(6, 7).flatten(4, 5).flatten(2, 3)
