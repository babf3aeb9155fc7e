#!/usr/bin/env python3
"""An independent Stable Diffusion forward pass in PyTorch (float32, CPU), for
checking mmserve's ggml engine on the tiny models of gen_tiny_sd_model.py
(or any SD 1.x / SDXL diffusers folder).

Written from the Hugging Face implementations, without importing them
(neither diffusers nor transformers is needed): transformers' modeling_clip.py
(CLIPTextModel, CLIPTextModelWithProjection) and diffusers'
unets/unet_2d_condition.py, unets/unet_2d_blocks.py, resnet.py,
transformers/transformer_2d.py, attention.py, attention_processor.py,
embeddings.py, autoencoders/vae.py and autoencoder_kl.py (UNet2DConditionModel,
AutoencoderKL). Reads the .safetensors files by hand (F32/F16/BF16).

    sd_reference.py MODEL_DIR OUT_DIR --latent LATENT.f32 --latent-shape C,H,W
        --timestep T --ids IDS.json [--ids2 IDS2.json]
        [--time-ids "h,w,top,left,th,tw"] [--intermediates]

IDS.json: a JSON list of chunks, each a list of 77 token ids (BOS, text, EOS,
padding) for text_encoder; IDS2.json the same for text_encoder_2 (sdxl; the
ids of IDS.json when left out). --time-ids: SDXL's add_time_ids (original
size, crop top-left, target size); by default (8H, 8W, 0, 0, 8H, 8W).

Writes float32 little-endian raw files into OUT_DIR, row-major as listed:
  text_hidden.f32       sd1: last_hidden_state (after final_layer_norm) of every
                        chunk, chunks concatenated along the tokens:
                        [chunks*77, hidden]. sdxl: hidden_states[-2] (the
                        penultimate layer's output, NOT final-normed) of
                        text_encoder and text_encoder_2, concatenated on the
                        features: [chunks*77, hidden1 + hidden2]
  pooled.f32            sdxl: text_encoder_2's final-normed state at the EOS
                        of the first chunk, through text_projection: [proj]
  unet_out.f32          one UNet2DConditionModel forward of the latent at
                        timestep T with text_hidden as encoder_hidden_states
                        (sdxl: added cond text_embeds = pooled, time_ids):
                        [C, H, W]
  vae_decoded.f32       AutoencoderKL.decode(latent / scaling_factor):
                        post_quant_conv then the decoder, unclamped: [3, 8H, 8W]
  vae_encoded_mean.f32  AutoencoderKL.encode(clamp(decoded, -1, 1)): encoder,
                        quant_conv, the mean half (before scaling): [C, H, W]
  shapes.json           {file name: shape} for the above
With --intermediates also unet_*.f32 / vae_*.f32 / te*_*.f32 stage outputs
(time embedding, each block's output, ...), listed in shapes.json, to find
where an implementation first diverges.
"""
import argparse
import json
import math
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from safetensors_numpy import read_safetensors  # noqa: E402

torch.set_grad_enabled(False)

# ----------------------------------------------------------------------------
# Loading


def load_safetensors(path):
    return {name: torch.from_numpy(values) for name, values in read_safetensors(path, skip_unsupported=True).items()}


def load_component(model_dir, sub):
    with open(os.path.join(model_dir, sub, "config.json"), encoding="utf-8") as f:
        cfg = json.load(f)
    folder = os.path.join(model_dir, sub)
    for name in ("model.safetensors", "diffusion_pytorch_model.safetensors"):
        if os.path.exists(os.path.join(folder, name)):
            return cfg, load_safetensors(os.path.join(folder, name))
    raise SystemExit(f"{folder}: no safetensors weights")


class Dump:
    """Collects named outputs (and prints their statistics)."""

    def __init__(self, out_dir, intermediates):
        self.out_dir = out_dir
        self.intermediates = intermediates
        self.shapes = {}

    def stat(self, name, t):
        t = t.float()
        print(f"{name:34s} {str(list(t.shape)):20s} mean {t.mean().item():+9.4f} std {t.std().item():9.4f} "
              f"min {t.min().item():+9.4f} max {t.max().item():+9.4f}", file=sys.stderr)
        if not torch.isfinite(t).all():
            raise SystemExit(f"{name}: not finite")

    def save(self, name, t):
        self.stat(name, t)
        arr = t.detach().float().contiguous().numpy().astype("<f4")
        arr.tofile(os.path.join(self.out_dir, name + ".f32"))
        self.shapes[name + ".f32"] = list(arr.shape)

    def mid(self, name, t):
        if self.intermediates:
            self.save(name, t[0] if t.dim() >= 2 and t.shape[0] == 1 else t)  # drop the batch of 1

    def finish(self):
        with open(os.path.join(self.out_dir, "shapes.json"), "w", encoding="utf-8") as f:
            json.dump(self.shapes, f, indent=2, sort_keys=True)
            f.write("\n")


# ----------------------------------------------------------------------------
# Primitives (as torch.nn modules compute them)


def linear(W, p, x):
    return F.linear(x, W[p + ".weight"], W.get(p + ".bias"))


def conv(W, p, x, stride=1, padding=None):
    w = W[p + ".weight"]
    if padding is None:
        padding = w.shape[-1] // 2
    return F.conv2d(x, w, W.get(p + ".bias"), stride=stride, padding=padding)


def group_norm(W, p, x, groups, eps):
    return F.group_norm(x, groups, W[p + ".weight"], W[p + ".bias"], eps)


def layer_norm(W, p, x, eps):
    return F.layer_norm(x, (x.shape[-1],), W[p + ".weight"], W[p + ".bias"], eps)


def attention(q, k, v, heads, mask=None):
    """softmax(Q K^T / sqrt(d) + mask) V over heads; q: [B, Nq, D], k, v: [B, Nk, D]."""
    b, nq, d = q.shape
    nk = k.shape[1]
    dh = d // heads
    q = q.reshape(b, nq, heads, dh).transpose(1, 2)
    k = k.reshape(b, nk, heads, dh).transpose(1, 2)
    v = v.reshape(b, nk, heads, dh).transpose(1, 2)
    scores = q @ k.transpose(-1, -2) / math.sqrt(dh)
    if mask is not None:
        scores = scores + mask
    out = scores.softmax(dim=-1) @ v
    return out.transpose(1, 2).reshape(b, nq, d)


def quick_gelu(x):
    return x * torch.sigmoid(1.702 * x)


ACTIVATIONS = {"quick_gelu": quick_gelu, "gelu": F.gelu}  # F.gelu: exact (erf)


def timestep_embedding(timesteps, dim, flip_sin_to_cos=True, downscale_freq_shift=0.0, max_period=10000):
    """diffusers.models.embeddings.get_timestep_embedding (scale 1)."""
    half = dim // 2
    exponent = -math.log(max_period) * torch.arange(0, half, dtype=torch.float32) / (half - downscale_freq_shift)
    emb = timesteps[:, None].float() * torch.exp(exponent)[None, :]
    emb = torch.cat([torch.sin(emb), torch.cos(emb)], dim=-1)
    if flip_sin_to_cos:
        emb = torch.cat([emb[:, half:], emb[:, :half]], dim=-1)
    if dim % 2 == 1:
        emb = F.pad(emb, (0, 1, 0, 0))
    return emb


# ----------------------------------------------------------------------------
# CLIP text encoders (transformers modeling_clip.py)


def clip_text(W, cfg, ids, dump=None, tag="te"):
    """Returns (hidden_states list: embeddings + every layer's output, last_hidden_state)."""
    ids = torch.as_tensor(ids, dtype=torch.long)
    b, n = ids.shape
    d, heads, eps = cfg["hidden_size"], cfg["num_attention_heads"], cfg["layer_norm_eps"]
    act = ACTIVATIONS[cfg["hidden_act"]]
    h = W["text_model.embeddings.token_embedding.weight"][ids] + \
        W["text_model.embeddings.position_embedding.weight"][torch.arange(n)][None]
    mask = torch.full((n, n), torch.finfo(torch.float32).min).triu(1)  # causal
    states = [h]
    for i in range(cfg["num_hidden_layers"]):
        p = f"text_model.encoder.layers.{i}."
        x = layer_norm(W, p + "layer_norm1", h, eps)
        q = linear(W, p + "self_attn.q_proj", x)
        k = linear(W, p + "self_attn.k_proj", x)
        v = linear(W, p + "self_attn.v_proj", x)
        h = h + linear(W, p + "self_attn.out_proj", attention(q, k, v, heads, mask))
        x = layer_norm(W, p + "layer_norm2", h, eps)
        h = h + linear(W, p + "mlp.fc2", act(linear(W, p + "mlp.fc1", x)))
        states.append(h)
        if dump:
            dump.mid(f"{tag}_layer{i}", h.reshape(b * n, d))
    last = layer_norm(W, "text_model.final_layer_norm", h, eps)
    return states, last


def eos_positions(cfg, ids):
    """As CLIPTextTransformer.forward: argmax of the ids for the legacy eos_token_id 2,
    else the first position holding eos_token_id."""
    ids = torch.as_tensor(ids, dtype=torch.long)
    first_eos = (ids == cfg["eos_token_id"]).int().argmax(dim=-1)
    largest = ids.argmax(dim=-1)
    if cfg["eos_token_id"] == 2:
        return largest
    if not torch.equal(first_eos, largest):
        print("note: the first EOS is not at the largest id; pooling at the first EOS as transformers does",
              file=sys.stderr)
    return first_eos


# ----------------------------------------------------------------------------
# UNet2DConditionModel


def resnet(W, p, x, temb, groups, eps):
    """diffusers ResnetBlock2D (time_embedding_norm "default", output_scale_factor 1)."""
    h = conv(W, p + ".conv1", F.silu(group_norm(W, p + ".norm1", x, groups, eps)))
    if temb is not None:
        h = h + linear(W, p + ".time_emb_proj", F.silu(temb))[:, :, None, None]
    h = conv(W, p + ".conv2", F.silu(group_norm(W, p + ".norm2", h, groups, eps)))
    if p + ".conv_shortcut.weight" in W:
        x = conv(W, p + ".conv_shortcut", x)
    return x + h


def cross_attention(W, p, x, context, heads):
    """diffusers Attention (to_q/to_k/to_v without bias, to_out.0 with)."""
    q = linear(W, p + ".to_q", x)
    k = linear(W, p + ".to_k", context)
    v = linear(W, p + ".to_v", context)
    return linear(W, p + ".to_out.0", attention(q, k, v, heads))


def transformer_2d(W, p, x, context, heads, groups, use_linear):
    """diffusers Transformer2DModel (continuous input) of BasicTransformerBlocks."""
    b, c, hgt, wid = x.shape
    residual = x
    h = F.group_norm(x, groups, W[p + ".norm.weight"], W[p + ".norm.bias"], 1e-6)
    if use_linear:
        h = linear(W, p + ".proj_in", h.permute(0, 2, 3, 1).reshape(b, hgt * wid, c))
    else:
        h = conv(W, p + ".proj_in", h)
        h = h.permute(0, 2, 3, 1).reshape(b, hgt * wid, h.shape[1])
    k = 0
    while f"{p}.transformer_blocks.{k}.norm1.weight" in W:
        bp = f"{p}.transformer_blocks.{k}"
        n = layer_norm(W, bp + ".norm1", h, 1e-5)
        h = h + cross_attention(W, bp + ".attn1", n, n, heads)
        n = layer_norm(W, bp + ".norm2", h, 1e-5)
        h = h + cross_attention(W, bp + ".attn2", n, context, heads)
        n = layer_norm(W, bp + ".norm3", h, 1e-5)
        value, gate = linear(W, bp + ".ff.net.0.proj", n).chunk(2, dim=-1)  # GEGLU
        h = h + linear(W, bp + ".ff.net.2", value * F.gelu(gate))
        k += 1
    if use_linear:
        h = linear(W, p + ".proj_out", h)
        h = h.reshape(b, hgt, wid, c).permute(0, 3, 1, 2)
    else:
        h = h.reshape(b, hgt, wid, h.shape[-1]).permute(0, 3, 1, 2)
        h = conv(W, p + ".proj_out", h)
    return h + residual


def as_list(value, n):
    return list(value) if isinstance(value, (list, tuple)) else [value] * n


def unet_forward(W, cfg, sample, timestep, context, text_embeds=None, time_ids=None, dump=None):
    boc = cfg["block_out_channels"]
    n = len(boc)
    layers = cfg["layers_per_block"]
    groups, eps = cfg["norm_num_groups"], cfg["norm_eps"]
    # diffusers: num_attention_heads = num_attention_heads or attention_head_dim
    heads = as_list(cfg.get("num_attention_heads") or cfg["attention_head_dim"], n)
    use_linear = cfg["use_linear_projection"]
    flip, shift = cfg["flip_sin_to_cos"], cfg["freq_shift"]

    t_emb = timestep_embedding(torch.tensor([float(timestep)]), boc[0], flip, shift)
    emb = linear(W, "time_embedding.linear_2", F.silu(linear(W, "time_embedding.linear_1", t_emb)))
    dump.mid("unet_t_emb", t_emb)
    dump.mid("unet_time_embedding", emb)
    if cfg.get("addition_embed_type") == "text_time":
        time_embeds = timestep_embedding(time_ids.flatten(), cfg["addition_time_embed_dim"], flip, shift)
        add = torch.cat([text_embeds, time_embeds.reshape(text_embeds.shape[0], -1)], dim=-1)
        aug = linear(W, "add_embedding.linear_2", F.silu(linear(W, "add_embedding.linear_1", add)))
        dump.mid("unet_add_embedding", aug)
        emb = emb + aug
    elif cfg.get("addition_embed_type") is not None:
        raise SystemExit(f"addition_embed_type {cfg['addition_embed_type']} not supported")

    x = conv(W, "conv_in", sample)
    dump.mid("unet_conv_in", x)
    skips = [x]
    for i, kind in enumerate(cfg["down_block_types"]):
        for j in range(layers):
            x = resnet(W, f"down_blocks.{i}.resnets.{j}", x, emb, groups, eps)
            if kind == "CrossAttnDownBlock2D":
                x = transformer_2d(W, f"down_blocks.{i}.attentions.{j}", x, context, heads[i], groups, use_linear)
            skips.append(x)
        if i < n - 1:
            x = conv(W, f"down_blocks.{i}.downsamplers.0.conv", x, stride=2, padding=1)
            skips.append(x)
        dump.mid(f"unet_down{i}", x)

    x = resnet(W, "mid_block.resnets.0", x, emb, groups, eps)
    x = transformer_2d(W, "mid_block.attentions.0", x, context, heads[-1], groups, use_linear)
    x = resnet(W, "mid_block.resnets.1", x, emb, groups, eps)
    dump.mid("unet_mid", x)

    rev_heads = list(reversed(heads))
    for i, kind in enumerate(cfg["up_block_types"]):
        for j in range(layers + 1):
            x = torch.cat([x, skips.pop()], dim=1)
            x = resnet(W, f"up_blocks.{i}.resnets.{j}", x, emb, groups, eps)
            if kind == "CrossAttnUpBlock2D":
                x = transformer_2d(W, f"up_blocks.{i}.attentions.{j}", x, context, rev_heads[i], groups, use_linear)
        if i < n - 1:
            x = conv(W, f"up_blocks.{i}.upsamplers.0.conv", F.interpolate(x, scale_factor=2.0, mode="nearest"))
        dump.mid(f"unet_up{i}", x)
    assert not skips

    x = F.silu(group_norm(W, "conv_norm_out", x, groups, eps))
    return conv(W, "conv_out", x)


# ----------------------------------------------------------------------------
# AutoencoderKL


def vae_attention(W, p, x, groups):
    """diffusers Attention as UNetMidBlock2D builds it: one head over all C channels,
    group_norm eps 1e-6, biases everywhere, residual connection, rescale 1."""
    b, c, hgt, wid = x.shape
    h = F.group_norm(x, groups, W[p + ".group_norm.weight"], W[p + ".group_norm.bias"], 1e-6)
    h = h.reshape(b, c, hgt * wid).transpose(1, 2)
    q, k, v = (linear(W, p + "." + name, h) for name in ("to_q", "to_k", "to_v"))
    h = linear(W, p + ".to_out.0", attention(q, k, v, 1))
    return h.transpose(1, 2).reshape(b, c, hgt, wid) + x


def vae_mid(W, p, x, groups):
    x = resnet(W, p + ".resnets.0", x, None, groups, 1e-6)
    x = vae_attention(W, p + ".attentions.0", x, groups)
    return resnet(W, p + ".resnets.1", x, None, groups, 1e-6)


def vae_decode(W, cfg, z, dump):
    groups = cfg["norm_num_groups"]
    n = len(cfg["block_out_channels"])
    layers = cfg["layers_per_block"]
    z = conv(W, "post_quant_conv", z)
    x = conv(W, "decoder.conv_in", z)
    x = vae_mid(W, "decoder.mid_block", x, groups)
    dump.mid("vae_dec_mid", x)
    for i in range(n):
        for j in range(layers + 1):
            x = resnet(W, f"decoder.up_blocks.{i}.resnets.{j}", x, None, groups, 1e-6)
        if i < n - 1:
            x = conv(W, f"decoder.up_blocks.{i}.upsamplers.0.conv", F.interpolate(x, scale_factor=2.0, mode="nearest"))
        dump.mid(f"vae_dec_up{i}", x)
    x = F.silu(group_norm(W, "decoder.conv_norm_out", x, groups, 1e-6))
    return conv(W, "decoder.conv_out", x)


def vae_encode_mean(W, cfg, image, dump):
    groups = cfg["norm_num_groups"]
    n = len(cfg["block_out_channels"])
    layers = cfg["layers_per_block"]
    x = conv(W, "encoder.conv_in", image)
    for i in range(n):
        for j in range(layers):
            x = resnet(W, f"encoder.down_blocks.{i}.resnets.{j}", x, None, groups, 1e-6)
        if i < n - 1:
            # Downsample2D with padding 0: pad right and bottom by one, then a stride-2 conv
            x = conv(W, f"encoder.down_blocks.{i}.downsamplers.0.conv", F.pad(x, (0, 1, 0, 1)), stride=2, padding=0)
        dump.mid(f"vae_enc_down{i}", x)
    x = vae_mid(W, "encoder.mid_block", x, groups)
    dump.mid("vae_enc_mid", x)
    x = conv(W, "encoder.conv_out", F.silu(group_norm(W, "encoder.conv_norm_out", x, groups, 1e-6)))
    moments = conv(W, "quant_conv", x)
    return moments.chunk(2, dim=1)[0]


# ----------------------------------------------------------------------------


def read_ids(path):
    with open(path, encoding="utf-8") as f:
        chunks = json.load(f)
    if not chunks or any(len(c) != 77 for c in chunks):
        raise SystemExit(f"{path}: want a list of chunks of 77 ids each")
    return chunks


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model_dir")
    ap.add_argument("out_dir")
    ap.add_argument("--latent", required=True)
    ap.add_argument("--latent-shape", required=True, help="C,H,W")
    ap.add_argument("--timestep", required=True, type=float)
    ap.add_argument("--ids", required=True)
    ap.add_argument("--ids2")
    ap.add_argument("--time-ids", help='"orig_h,orig_w,crop_top,crop_left,target_h,target_w" (sdxl)')
    ap.add_argument("--intermediates", action="store_true", help="also write each stage's output")
    args = ap.parse_args()

    os.makedirs(args.out_dir, exist_ok=True)
    dump = Dump(args.out_dir, args.intermediates)
    with open(os.path.join(args.model_dir, "model_index.json"), encoding="utf-8") as f:
        sdxl = json.load(f)["_class_name"].startswith("StableDiffusionXL")

    c, hgt, wid = (int(v) for v in args.latent_shape.split(","))
    latent = torch.from_numpy(np.fromfile(args.latent, dtype="<f4").astype(np.float32))
    if latent.numel() != c * hgt * wid:
        raise SystemExit(f"{args.latent}: {latent.numel()} floats, not {c}*{hgt}*{wid}")
    latent = latent.reshape(1, c, hgt, wid)
    dump.stat("latent", latent)

    ids = read_ids(args.ids)
    te_cfg, te_w = load_component(args.model_dir, "text_encoder")
    states, last = clip_text(te_w, te_cfg, ids, dump, "te1")
    text_embeds = time_ids = None
    if not sdxl:
        context = last.reshape(1, -1, te_cfg["hidden_size"])
    else:
        ids2 = read_ids(args.ids2) if args.ids2 else ids
        if len(ids2) != len(ids):
            raise SystemExit("--ids and --ids2 need the same number of chunks")
        te2_cfg, te2_w = load_component(args.model_dir, "text_encoder_2")
        states2, last2 = clip_text(te2_w, te2_cfg, ids2, dump, "te2")
        context = torch.cat([states[-2], states2[-2]], dim=-1).reshape(1, -1, te_cfg["hidden_size"] + te2_cfg["hidden_size"])
        eos = eos_positions(te2_cfg, ids2[:1])
        pooled = last2[torch.arange(1), eos]
        text_embeds = F.linear(pooled, te2_w["text_projection.weight"])
        dump.save("pooled", text_embeds[0])
        if args.time_ids:
            values = [float(v) for v in args.time_ids.split(",")]
            if len(values) != 6:
                raise SystemExit("--time-ids wants 6 numbers")
        else:
            values = [8.0 * hgt, 8.0 * wid, 0.0, 0.0, 8.0 * hgt, 8.0 * wid]
        time_ids = torch.tensor([values], dtype=torch.float32)
    dump.save("text_hidden", context[0])

    unet_cfg, unet_w = load_component(args.model_dir, "unet")
    dump.save("unet_out", unet_forward(unet_w, unet_cfg, latent, args.timestep, context, text_embeds, time_ids,
                                       dump)[0])

    vae_cfg, vae_w = load_component(args.model_dir, "vae")
    decoded = vae_decode(vae_w, vae_cfg, latent / vae_cfg["scaling_factor"], dump)
    dump.save("vae_decoded", decoded[0])
    dump.save("vae_encoded_mean", vae_encode_mean(vae_w, vae_cfg, decoded.clamp(-1.0, 1.0), dump)[0])
    dump.finish()


if __name__ == "__main__":
    main()
