#!/usr/bin/env python3
"""Writes a tiny Stable Diffusion model (SD 1.x or SDXL architecture) with
deterministic random weights, in the Hugging Face diffusers folder layout,
for tests of mmserve's diffusion engine. Debian's python3-numpy only (no
torch: it runs at build time). Same arguments, same bytes.

    gen_tiny_sd_model.py OUT_DIR [--variant sd1|sdxl] [--dtype f32|f16]
        [--single-file PATH.safetensors] [--seed 0]

OUT_DIR gets what `StableDiffusionPipeline.save_pretrained` /
`StableDiffusionXLPipeline.save_pretrained` write:

    model_index.json
    scheduler/scheduler_config.json        EulerDiscreteScheduler, SD's betas
    tokenizer/{vocab.json,merges.txt,tokenizer_config.json,special_tokens_map.json}
    text_encoder/{config.json,model.safetensors}            CLIPTextModel
    tokenizer_2/, text_encoder_2/    (sdxl)  CLIPTextModelWithProjection
    unet/{config.json,diffusion_pytorch_model.safetensors}  UNet2DConditionModel
    vae/{config.json,diffusion_pytorch_model.safetensors}   AutoencoderKL

The BPE vocabulary and merges are learnt by tools/clip_vocab.py from a
small corpus of prompt words (CLIP's byte-level scheme, "</w>" word ends,
<|startoftext|> and <|endoftext|>). tokenizer/ pads with <|endoftext|>,
tokenizer_2/ with "!" (as SDXL's).

Shapes
------
text_encoder (both variants): hidden 32, intermediate 64, 2 layers, 4 heads
(head dim 8), 77 positions, quick_gelu, layer_norm_eps 1e-5.
text_encoder_2 (sdxl): hidden 64, intermediate 128, 2 layers, 4 heads (head
dim 16), gelu (exact, erf), projection_dim 64 (text_projection has no bias).

unet sd1: block_out_channels [32, 64, 64], layers_per_block 2, down
[CrossAttn, CrossAttn, Down], up [Up, CrossAttn, CrossAttn], mid
UNetMidBlock2DCrossAttn, cross_attention_dim 32, attention_head_dim 4,
norm_num_groups 8, norm_eps 1e-5, use_linear_projection false (proj_in /
proj_out are 1x1 convolutions [C, C, 1, 1]), sample_size 8.
unet sdxl: block_out_channels [32, 64], layers_per_block 2, down [Down,
CrossAttn], up [CrossAttn, Up], transformer_layers_per_block [1, 2],
attention_head_dim [2, 4], cross_attention_dim 96 (= 32 + 64, both encoders'
penultimate states side by side), use_linear_projection true (proj_in /
proj_out are Linear [C, C]), addition_embed_type "text_time",
addition_time_embed_dim 8, projection_class_embeddings_input_dim 112
(= 64 pooled + 6 time ids * 8), sample_size 16.

NOTE `attention_head_dim` is, as in every real SD config, the NUMBER OF
HEADS: diffusers' UNet2DConditionModel does `num_attention_heads =
num_attention_heads or attention_head_dim` (a naming mistake kept for
compatibility, diffusers issue 2011), so a transformer over C channels
has attention_head_dim[i] heads of C / attention_head_dim[i] channels each.
Per block: sd1 down 0: 4 heads x 8, down 1: 4 x 16, mid: 4 x 16, up 1: 4 x
16, up 2: 4 x 8; sdxl down 1, mid, up 0: 4 heads x 16 (the up blocks take
the REVERSED list, the mid block the last entry; transformer depth likewise:
sdxl down 1: 2, mid: 2, up 0: 2).
The time embedding is 4 * block_out_channels[0] = 128 wide.

vae: AutoencoderKL, block_out_channels [16, 16, 32, 32] (4 levels, so the
latent is 1/8 of the image as in real SD), layers_per_block 1 (the decoder's
up blocks have 2 resnets each), norm_num_groups 8, latent_channels 4,
scaling_factor 0.18215 (sd1) / 0.13025 (sdxl), single-head mid-block
attention over all channels with the current names (group_norm, to_q, to_k,
to_v, to_out.0: Linear [C, C] with bias).

Weights: normal / sqrt(fan_in) (times 0.5 on the layers that end a
residual branch, except the cross-attention's output so that the prompt
shows), norm weights 1 + 0.1 * noise, norm biases 0.05 * noise, other
biases 0.02 * noise, token embeddings std 1, positions std 0.3; nothing is
zero-initialised (proj_out, conv_out, conv2 all random), so every layer
changes the result. Head counts do not change any shape. Activations stay
within a std of about 0.1..10 at every stage, also through 4 Euler steps
with classifier-free guidance 7.5 (the UNet predicts eps with std ~0.6). Each tensor draws from its own generator seeded by
(seed, crc32 of its diffusers name): one tensor's shape change leaves the
others' values alone.

--single-file PATH writes the same tensors once more into one
.safetensors in the original (CompVis / Stability) checkpoint layout, the
one A1111 / ComfyUI / stable-diffusion.cpp load (mapping as diffusers'
src/diffusers/loaders/single_file_utils.py reads it back):

  UNet, prefix "model.diffusion_model.":
    conv_in                          input_blocks.0.0
    time_embedding.linear_1 / _2     time_embed.0 / time_embed.2
    add_embedding.linear_1 / _2      label_emb.0.0 / label_emb.0.2   (sdxl)
    down_blocks.i.resnets.j          input_blocks.(1 + i*(L+1) + j).0
    down_blocks.i.attentions.j       input_blocks.(1 + i*(L+1) + j).1
    down_blocks.i.downsamplers.0.conv  input_blocks.(1 + i*(L+1) + L).0.op
    mid_block.resnets.0 / attentions.0 / resnets.1   middle_block.0 / .1 / .2
    up_blocks.i.resnets.j            output_blocks.(i*(L+1) + j).0
    up_blocks.i.attentions.j         output_blocks.(i*(L+1) + j).1
    up_blocks.i.upsamplers.0.conv    output_blocks.(i*(L+1) + L).1.conv
                                     (.2.conv when the block has attentions)
    conv_norm_out / conv_out         out.0 / out.2
    (L = layers_per_block = 2)
    inside a resnet: norm1 in_layers.0, conv1 in_layers.2, time_emb_proj
    emb_layers.1, norm2 out_layers.0, conv2 out_layers.3, conv_shortcut
    skip_connection; inside a transformer every name is the same (norm,
    proj_in, transformer_blocks.k.attn1.to_q, ..., proj_out) and so are
    the shapes (conv [C,C,1,1] for sd1, linear [C,C] for sdxl).
  VAE, prefix "first_stage_model.":
    encoder.down_blocks.i.resnets.j  encoder.down.i.block.j
    encoder.down_blocks.i.downsamplers.0.conv   encoder.down.i.downsample.conv
    decoder.up_blocks.i.resnets.j    decoder.up.(3 - i).block.j   (REVERSED)
    decoder.up_blocks.i.upsamplers.0.conv       decoder.up.(3 - i).upsample.conv
    *.mid_block.resnets.0 / .1       *.mid.block_1 / *.mid.block_2
    *.mid_block.attentions.0.group_norm         *.mid.attn_1.norm
    *.mid_block.attentions.0.to_q / to_k / to_v / to_out.0
                                     *.mid.attn_1.q / k / v / proj_out, as 1x1
                                     convolutions: weight [C, C, 1, 1]
    *.conv_norm_out                  *.norm_out
    conv_shortcut (in resnets)       nin_shortcut
    conv_in, conv_out, norm1, conv1, norm2, conv2, quant_conv,
    post_quant_conv                  unchanged
  Text encoders:
    sd1 text_encoder                 "cond_stage_model.transformer." + HF name
    sdxl text_encoder                "conditioner.embedders.0.transformer." + HF name
    sdxl text_encoder_2, prefix "conditioner.embedders.1.model." (OpenCLIP):
      text_model.embeddings.token_embedding.weight   token_embedding.weight
      text_model.embeddings.position_embedding.weight  positional_embedding
      text_model.encoder.layers.i.layer_norm1 / 2      transformer.resblocks.i.ln_1 / ln_2
      ...self_attn.q_proj, k_proj, v_proj (weight, bias)
                 transformer.resblocks.i.attn.in_proj_weight [3D, D] = cat(q, k, v)
                 transformer.resblocks.i.attn.in_proj_bias [3D]    = cat(q, k, v)
      ...self_attn.out_proj           transformer.resblocks.i.attn.out_proj
      ...mlp.fc1 / mlp.fc2            transformer.resblocks.i.mlp.c_fc / mlp.c_proj
      text_model.final_layer_norm     ln_final
      text_projection.weight [P, D]   text_projection [D, P]  (TRANSPOSED: x @ W)
  Not written (real checkpoints have them; a loader should ignore them):
  *.embeddings.position_ids, model.logit_scale, alphas_cumprod and the other
  scheduler buffers, model_ema.*.
"""
import argparse
import json
import os
import struct
import sys
import zlib

import numpy as np

DIFFUSERS_VERSION = "0.27.2"
TRANSFORMERS_VERSION = "4.40.0"
MAX_POSITIONS = 77
NUM_MERGES = 400

# A few hundred words of the kind prompts are made of, for the BPE vocabulary.
CORPUS = """
a an the of in on at with and or by from for to into over under above below
near behind beside between through across along around inside outside under
photo photograph portrait landscape painting drawing sketch illustration render
digital art oil watercolor acrylic pencil charcoal ink pastel canvas poster
cinematic dramatic lighting soft light golden hour sunset sunrise twilight
night day morning evening dusk dawn shadow shadows glow glowing neon bright
dark moody vivid colorful pastel muted warm cool cold hot foggy misty rainy
snowy stormy cloudy sunny clear sky clouds rain snow fog mist storm lightning
mountain mountains river lake ocean sea beach coast island forest woods jungle
desert valley hill hills field meadow garden park city street road bridge
tower castle house village town building skyscraper temple church ruins cave
cat cats dog dogs horse bird birds fish dragon wolf fox bear lion tiger owl
eagle rabbit deer butterfly flower flowers rose roses tree trees leaf leaves
grass moss stone rock rocks sand water fire ice crystal gold silver metal wood
man woman boy girl child old young person people warrior knight wizard witch
princess king queen robot astronaut soldier samurai pirate elf angel monster
face eyes hair smile hands dress armor cloak hat crown sword shield book
red orange yellow green blue purple pink white black brown gray grey cyan
magenta teal turquoise crimson scarlet emerald sapphire golden silver bronze
highly detailed intricate detail sharp focus masterpiece best quality high
resolution ultra realistic photorealistic hyperrealistic realistic stylized
trending on artstation concept art fantasy science fiction sci fi cyberpunk
steampunk surreal abstract minimalist baroque renaissance impressionist anime
manga cartoon comic pixel low poly isometric studio ghibli unreal engine
octane volumetric depth of field bokeh wide angle close up macro lens camera
shot view aerial top down full body half portrait centered symmetrical
beautiful elegant cute lovely majestic epic huge tiny small large giant
ancient modern futuristic medieval victorian gothic rustic cozy peaceful calm
quiet lonely happy sad angry scary mysterious magical enchanted glowing
floating flying running walking sitting standing sleeping dancing fighting
reading looking holding wearing riding swimming playing singing smiling
blurry ugly deformed distorted bad anatomy extra fingers watermark text
signature cropped worst quality low quality jpeg artifacts duplicate
astronaut riding a horse on the moon a cat sitting on a windowsill
a castle on a hill at sunset a red fox in the snow a bowl of fruit on a table
"""


# ----------------------------------------------------------------------------
# Parameters


class Params:
    """Ordered tensors with their init; names are diffusers / transformers names."""

    def __init__(self, seed, salt):
        self.seed = seed
        self.salt = salt
        self.tensors = {}

    def _normal(self, name, shape):
        rng = np.random.default_rng([self.seed, zlib.crc32(f"{self.salt}/{name}".encode())])
        return rng.standard_normal(shape)

    def add(self, name, value):
        if name in self.tensors:
            raise SystemExit(f"duplicate tensor {name}")
        self.tensors[name] = np.ascontiguousarray(value, dtype=np.float32)

    def linear(self, name, fan_in, fan_out, bias=True, gain=1.0):
        self.add(name + ".weight", self._normal(name + ".weight", (fan_out, fan_in)) * gain / np.sqrt(fan_in))
        if bias:
            self.add(name + ".bias", self._normal(name + ".bias", (fan_out,)) * 0.02)

    def conv(self, name, cin, cout, k, gain=1.0):
        self.add(name + ".weight", self._normal(name + ".weight", (cout, cin, k, k)) * gain / np.sqrt(cin * k * k))
        self.add(name + ".bias", self._normal(name + ".bias", (cout,)) * 0.02)

    def norm(self, name, c):
        self.add(name + ".weight", 1.0 + 0.1 * self._normal(name + ".weight", (c,)))
        self.add(name + ".bias", 0.05 * self._normal(name + ".bias", (c,)))

    def embedding(self, name, n, d, std):
        self.add(name + ".weight", self._normal(name + ".weight", (n, d)) * std)


# Gains of the layers that end a residual branch (they are zero-initialised in
# training code; here small but non-zero so the residual stream stays bounded).
RES_GAIN = 0.5


def clip_text_params(P, cfg, prefix="text_model.", projection=False):
    d, inter = cfg["hidden_size"], cfg["intermediate_size"]
    P.embedding(prefix + "embeddings.token_embedding", cfg["vocab_size"], d, 1.0)
    P.embedding(prefix + "embeddings.position_embedding", cfg["max_position_embeddings"], d, 0.3)
    for i in range(cfg["num_hidden_layers"]):
        layer = f"{prefix}encoder.layers.{i}."
        P.norm(layer + "layer_norm1", d)
        for proj in ("q_proj", "k_proj", "v_proj"):
            P.linear(layer + "self_attn." + proj, d, d)
        P.linear(layer + "self_attn.out_proj", d, d, gain=RES_GAIN)
        P.norm(layer + "layer_norm2", d)
        P.linear(layer + "mlp.fc1", d, inter)
        P.linear(layer + "mlp.fc2", inter, d, gain=RES_GAIN)
    P.norm(prefix + "final_layer_norm", d)
    if projection:
        P.linear("text_projection", d, cfg["projection_dim"], bias=False)


def resnet_params(P, name, cin, cout, temb):
    P.norm(name + ".norm1", cin)
    P.conv(name + ".conv1", cin, cout, 3)
    if temb is not None:
        P.linear(name + ".time_emb_proj", temb, cout)
    P.norm(name + ".norm2", cout)
    P.conv(name + ".conv2", cout, cout, 3, gain=RES_GAIN)
    if cin != cout:
        P.conv(name + ".conv_shortcut", cin, cout, 1)


def transformer_params(P, name, c, depth, context_dim, linear):
    P.norm(name + ".norm", c)

    def proj(sub, gain=1.0):
        if linear:
            P.linear(name + sub, c, c, gain=gain)
        else:
            P.conv(name + sub, c, c, 1, gain=gain)

    proj(".proj_in")
    for k in range(depth):
        block = f"{name}.transformer_blocks.{k}."
        P.norm(block + "norm1", c)
        for attn, kv_dim in (("attn1", c), ("attn2", context_dim)):
            P.linear(block + attn + ".to_q", c, c, bias=False)
            P.linear(block + attn + ".to_k", kv_dim, c, bias=False)
            P.linear(block + attn + ".to_v", kv_dim, c, bias=False)
            # the cross-attention's output at full gain, so that the prompt shows in the result
            P.linear(block + attn + ".to_out.0", c, c, gain=RES_GAIN if attn == "attn1" else 1.0)
            if attn == "attn1":
                P.norm(block + "norm2", c)
        P.norm(block + "norm3", c)
        P.linear(block + "ff.net.0.proj", c, 2 * 4 * c)  # GEGLU: value and gate halves
        P.linear(block + "ff.net.2", 4 * c, c, gain=RES_GAIN)
    proj(".proj_out", gain=RES_GAIN)


def as_list(value, n):
    return list(value) if isinstance(value, (list, tuple)) else [value] * n


def unet_params(P, cfg):
    boc = cfg["block_out_channels"]
    n = len(boc)
    layers = cfg["layers_per_block"]
    temb = boc[0] * 4
    depth = as_list(cfg["transformer_layers_per_block"], n)
    ctx = cfg["cross_attention_dim"]
    linear = cfg["use_linear_projection"]

    P.conv("conv_in", cfg["in_channels"], boc[0], 3)
    P.linear("time_embedding.linear_1", boc[0], temb)
    P.linear("time_embedding.linear_2", temb, temb)
    if cfg.get("addition_embed_type") == "text_time":
        P.linear("add_embedding.linear_1", cfg["projection_class_embeddings_input_dim"], temb)
        P.linear("add_embedding.linear_2", temb, temb)

    out = boc[0]
    for i, kind in enumerate(cfg["down_block_types"]):
        cin, out = out, boc[i]
        for j in range(layers):
            resnet_params(P, f"down_blocks.{i}.resnets.{j}", cin if j == 0 else out, out, temb)
            if kind == "CrossAttnDownBlock2D":
                transformer_params(P, f"down_blocks.{i}.attentions.{j}", out, depth[i], ctx, linear)
        if i < n - 1:
            P.conv(f"down_blocks.{i}.downsamplers.0.conv", out, out, 3)

    c = boc[-1]
    resnet_params(P, "mid_block.resnets.0", c, c, temb)
    transformer_params(P, "mid_block.attentions.0", c, depth[-1], ctx, linear)
    resnet_params(P, "mid_block.resnets.1", c, c, temb)

    rev = list(reversed(boc))
    rev_depth = list(reversed(depth))
    out = rev[0]
    for i, kind in enumerate(cfg["up_block_types"]):
        prev, out = out, rev[i]
        cin = rev[min(i + 1, n - 1)]
        for j in range(layers + 1):
            skip = cin if j == layers else out
            res_in = prev if j == 0 else out
            resnet_params(P, f"up_blocks.{i}.resnets.{j}", res_in + skip, out, temb)
            if kind == "CrossAttnUpBlock2D":
                transformer_params(P, f"up_blocks.{i}.attentions.{j}", out, rev_depth[i], ctx, linear)
        if i < n - 1:
            P.conv(f"up_blocks.{i}.upsamplers.0.conv", out, out, 3)

    P.norm("conv_norm_out", boc[0])
    P.conv("conv_out", boc[0], cfg["out_channels"], 3, gain=1.0)


def vae_attention_params(P, name, c):
    P.norm(name + ".group_norm", c)
    for proj in ("to_q", "to_k", "to_v"):
        P.linear(name + "." + proj, c, c)
    P.linear(name + ".to_out.0", c, c, gain=RES_GAIN)


def vae_params(P, cfg):
    boc = cfg["block_out_channels"]
    n = len(boc)
    layers = cfg["layers_per_block"]
    lat = cfg["latent_channels"]

    P.conv("encoder.conv_in", cfg["in_channels"], boc[0], 3)
    out = boc[0]
    for i in range(n):
        cin, out = out, boc[i]
        for j in range(layers):
            resnet_params(P, f"encoder.down_blocks.{i}.resnets.{j}", cin if j == 0 else out, out, None)
        if i < n - 1:
            P.conv(f"encoder.down_blocks.{i}.downsamplers.0.conv", out, out, 3)
    c = boc[-1]
    resnet_params(P, "encoder.mid_block.resnets.0", c, c, None)
    vae_attention_params(P, "encoder.mid_block.attentions.0", c)
    resnet_params(P, "encoder.mid_block.resnets.1", c, c, None)
    P.norm("encoder.conv_norm_out", c)
    P.conv("encoder.conv_out", c, 2 * lat, 3)

    P.conv("decoder.conv_in", lat, c, 3)
    resnet_params(P, "decoder.mid_block.resnets.0", c, c, None)
    vae_attention_params(P, "decoder.mid_block.attentions.0", c)
    resnet_params(P, "decoder.mid_block.resnets.1", c, c, None)
    rev = list(reversed(boc))
    out = rev[0]
    for i in range(n):
        prev, out = out, rev[i]
        for j in range(layers + 1):
            resnet_params(P, f"decoder.up_blocks.{i}.resnets.{j}", prev if j == 0 else out, out, None)
        if i < n - 1:
            P.conv(f"decoder.up_blocks.{i}.upsamplers.0.conv", out, out, 3)
    P.norm("decoder.conv_norm_out", boc[0])
    P.conv("decoder.conv_out", boc[0], cfg["out_channels"], 3, gain=0.5)

    P.conv("quant_conv", 2 * lat, 2 * lat, 1)
    P.conv("post_quant_conv", lat, lat, 1)


# ----------------------------------------------------------------------------
# Configurations


def clip_config(vocab, bos, eos, pad, hidden, inter, act, projection_dim, with_projection, heads=4, layers=2):
    return {
        "architectures": ["CLIPTextModelWithProjection" if with_projection else "CLIPTextModel"],
        "attention_dropout": 0.0,
        "bos_token_id": bos,
        "dropout": 0.0,
        "eos_token_id": eos,
        "hidden_act": act,
        "hidden_size": hidden,
        "initializer_factor": 1.0,
        "initializer_range": 0.02,
        "intermediate_size": inter,
        "layer_norm_eps": 1e-05,
        "max_position_embeddings": MAX_POSITIONS,
        "model_type": "clip_text_model",
        "num_attention_heads": heads,
        "num_hidden_layers": layers,
        "pad_token_id": pad,
        "projection_dim": projection_dim,
        "torch_dtype": "float32",
        "transformers_version": TRANSFORMERS_VERSION,
        "vocab_size": len(vocab),
    }


def unet_config(variant):
    cfg = {
        "_class_name": "UNet2DConditionModel",
        "_diffusers_version": DIFFUSERS_VERSION,
        "act_fn": "silu",
        "addition_embed_type": None,
        "addition_embed_type_num_heads": 64,
        "addition_time_embed_dim": None,
        "attention_head_dim": 4,
        "attention_type": "default",
        "block_out_channels": [32, 64, 64],
        "center_input_sample": False,
        "class_embed_type": None,
        "class_embeddings_concat": False,
        "conv_in_kernel": 3,
        "conv_out_kernel": 3,
        "cross_attention_dim": 32,
        "cross_attention_norm": None,
        "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
        "downsample_padding": 1,
        "dropout": 0.0,
        "dual_cross_attention": False,
        "encoder_hid_dim": None,
        "encoder_hid_dim_type": None,
        "flip_sin_to_cos": True,
        "freq_shift": 0,
        "in_channels": 4,
        "layers_per_block": 2,
        "mid_block_only_cross_attention": None,
        "mid_block_scale_factor": 1,
        "mid_block_type": "UNetMidBlock2DCrossAttn",
        "norm_eps": 1e-05,
        "norm_num_groups": 8,
        "num_attention_heads": None,
        "num_class_embeds": None,
        "only_cross_attention": False,
        "out_channels": 4,
        "projection_class_embeddings_input_dim": None,
        "resnet_out_scale_factor": 1.0,
        "resnet_skip_time_act": False,
        "resnet_time_scale_shift": "default",
        "reverse_transformer_layers_per_block": None,
        "sample_size": 8,
        "time_cond_proj_dim": None,
        "time_embedding_act_fn": None,
        "time_embedding_dim": None,
        "time_embedding_type": "positional",
        "timestep_post_act": None,
        "transformer_layers_per_block": 1,
        "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
        "upcast_attention": False,
        "use_linear_projection": False,
    }
    if variant == "sd15-size":
        # SD 1.5's real shapes (runwayml/stable-diffusion-v1-5 unet/config.json), for benchmarks.
        cfg.update({
            "attention_head_dim": 8,
            "block_out_channels": [320, 640, 1280, 1280],
            "cross_attention_dim": 768,
            "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
            "norm_num_groups": 32,
            "sample_size": 64,
            "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
        })
    if variant == "sdxl":
        cfg.update({
            "addition_embed_type": "text_time",
            "addition_time_embed_dim": 8,
            "attention_head_dim": [2, 4],
            "block_out_channels": [32, 64],
            "cross_attention_dim": 96,
            "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"],
            "projection_class_embeddings_input_dim": 112,
            "sample_size": 16,
            "transformer_layers_per_block": [1, 2],
            "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"],
            "use_linear_projection": True,
        })
    return cfg


def vae_config(variant):
    if variant == "sd15-size":
        cfg = vae_config("sd1")
        cfg.update({"block_out_channels": [128, 256, 512, 512], "layers_per_block": 2, "norm_num_groups": 32,
                    "sample_size": 512})
        return cfg
    return {
        "_class_name": "AutoencoderKL",
        "_diffusers_version": DIFFUSERS_VERSION,
        "act_fn": "silu",
        "block_out_channels": [16, 16, 32, 32],
        "down_block_types": ["DownEncoderBlock2D"] * 4,
        "force_upcast": True,
        "in_channels": 3,
        "latent_channels": 4,
        "latents_mean": None,
        "latents_std": None,
        "layers_per_block": 1,
        "mid_block_add_attention": True,
        "norm_num_groups": 8,
        "out_channels": 3,
        "sample_size": 64 if variant == "sd1" else 128,
        "scaling_factor": 0.13025 if variant == "sdxl" else 0.18215,
        "shift_factor": None,
        "up_block_types": ["UpDecoderBlock2D"] * 4,
        "use_post_quant_conv": True,
        "use_quant_conv": True,
    }


def scheduler_config():
    return {
        "_class_name": "EulerDiscreteScheduler",
        "_diffusers_version": DIFFUSERS_VERSION,
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "beta_start": 0.00085,
        "clip_sample": False,
        "interpolation_type": "linear",
        "num_train_timesteps": 1000,
        "prediction_type": "epsilon",
        "sample_max_value": 1.0,
        "set_alpha_to_one": False,
        "skip_prk_steps": True,
        "steps_offset": 1,
        "timestep_spacing": "leading",
        "trained_betas": None,
        "use_karras_sigmas": False,
    }


def model_index(variant):
    common = {
        "_diffusers_version": DIFFUSERS_VERSION,
        "feature_extractor": [None, None],
        "image_encoder": [None, None],
        "scheduler": ["diffusers", "EulerDiscreteScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }
    if variant != "sdxl":
        return {"_class_name": "StableDiffusionPipeline", **common,
                "requires_safety_checker": False, "safety_checker": [None, None]}
    return {"_class_name": "StableDiffusionXLPipeline", **common,
            "force_zeros_for_empty_prompt": True,
            "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
            "tokenizer_2": ["transformers", "CLIPTokenizer"]}


# ----------------------------------------------------------------------------
# Original (single-file) names


RESNET_LDM = [("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("time_emb_proj", "emb_layers.1"),
              ("norm2", "out_layers.0"), ("conv2", "out_layers.3"), ("conv_shortcut", "skip_connection")]


def ldm_unet_prefixes(cfg):
    """(diffusers prefix, original prefix, kind) for every module of the UNet."""
    n = len(cfg["block_out_channels"])
    layers = cfg["layers_per_block"]
    rules = [("conv_in.", "input_blocks.0.0.", None),
             ("time_embedding.linear_1.", "time_embed.0.", None),
             ("time_embedding.linear_2.", "time_embed.2.", None),
             ("add_embedding.linear_1.", "label_emb.0.0.", None),
             ("add_embedding.linear_2.", "label_emb.0.2.", None),
             ("conv_norm_out.", "out.0.", None),
             ("conv_out.", "out.2.", None),
             ("mid_block.resnets.0.", "middle_block.0.", "resnet"),
             ("mid_block.attentions.0.", "middle_block.1.", None),
             ("mid_block.resnets.1.", "middle_block.2.", "resnet")]
    for i in range(n):
        for j in range(layers):
            k = 1 + i * (layers + 1) + j
            rules.append((f"down_blocks.{i}.resnets.{j}.", f"input_blocks.{k}.0.", "resnet"))
            rules.append((f"down_blocks.{i}.attentions.{j}.", f"input_blocks.{k}.1.", None))
        rules.append((f"down_blocks.{i}.downsamplers.0.conv.",
                      f"input_blocks.{1 + i * (layers + 1) + layers}.0.op.", None))
    for i, kind in enumerate(cfg["up_block_types"]):
        for j in range(layers + 1):
            k = i * (layers + 1) + j
            rules.append((f"up_blocks.{i}.resnets.{j}.", f"output_blocks.{k}.0.", "resnet"))
            rules.append((f"up_blocks.{i}.attentions.{j}.", f"output_blocks.{k}.1.", None))
        slot = 2 if kind == "CrossAttnUpBlock2D" else 1
        rules.append((f"up_blocks.{i}.upsamplers.0.conv.",
                      f"output_blocks.{i * (layers + 1) + layers}.{slot}.conv.", None))
    return rules


def map_by_prefix(name, rules):
    best = None
    for new, old, kind in rules:
        if name.startswith(new) and (best is None or len(new) > len(best[0])):
            best = (new, old, kind)
    if best is None:
        raise SystemExit(f"no original name for {name}")
    new, old, kind = best
    rest = name[len(new):]
    if kind == "resnet":
        for a, b in RESNET_LDM:
            if rest.startswith(a + "."):
                rest = b + rest[len(a):]
                break
    return old + rest


def ldm_vae_prefixes(cfg):
    n = len(cfg["block_out_channels"])
    layers = cfg["layers_per_block"]
    rules = []
    for part in ("encoder", "decoder"):
        rules += [(f"{part}.conv_norm_out.", f"{part}.norm_out.", None),
                  (f"{part}.mid_block.resnets.0.", f"{part}.mid.block_1.", "vae_resnet"),
                  (f"{part}.mid_block.resnets.1.", f"{part}.mid.block_2.", "vae_resnet"),
                  (f"{part}.mid_block.attentions.0.", f"{part}.mid.attn_1.", "vae_attn"),
                  (f"{part}.conv_in.", f"{part}.conv_in.", None),
                  (f"{part}.conv_out.", f"{part}.conv_out.", None)]
    for i in range(n):
        for j in range(layers):
            rules.append((f"encoder.down_blocks.{i}.resnets.{j}.", f"encoder.down.{i}.block.{j}.", "vae_resnet"))
        rules.append((f"encoder.down_blocks.{i}.downsamplers.0.conv.", f"encoder.down.{i}.downsample.conv.", None))
        for j in range(layers + 1):
            rules.append((f"decoder.up_blocks.{i}.resnets.{j}.", f"decoder.up.{n - 1 - i}.block.{j}.", "vae_resnet"))
        rules.append((f"decoder.up_blocks.{i}.upsamplers.0.conv.", f"decoder.up.{n - 1 - i}.upsample.conv.", None))
    rules += [("quant_conv.", "quant_conv.", None), ("post_quant_conv.", "post_quant_conv.", None)]
    return rules


VAE_ATTN_LDM = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def ldm_vae_tensors(vae, cfg):
    rules = ldm_vae_prefixes(cfg)
    out = {}
    for name, value in vae.items():
        best = max((r for r in rules if name.startswith(r[0])), key=lambda r: len(r[0]), default=None)
        if best is None:
            raise SystemExit(f"no original name for vae {name}")
        new, old, kind = best
        rest = name[len(new):]
        if kind == "vae_resnet" and rest.startswith("conv_shortcut."):
            rest = "nin_shortcut." + rest[len("conv_shortcut."):]
        if kind == "vae_attn":
            module, param = rest.rsplit(".", 1)
            rest = VAE_ATTN_LDM[module] + "." + param
            if module != "group_norm" and param == "weight":
                value = value.reshape(value.shape + (1, 1))  # Linear [C, C] -> Conv2d 1x1 [C, C, 1, 1]
        out["first_stage_model." + old + rest] = value
    return out


def open_clip_tensors(te, cfg, prefix):
    """transformers CLIPTextModelWithProjection names -> OpenCLIP's (SDXL conditioner.embedders.1)."""
    out = {}
    out[prefix + "token_embedding.weight"] = te["text_model.embeddings.token_embedding.weight"]
    out[prefix + "positional_embedding"] = te["text_model.embeddings.position_embedding.weight"]
    for i in range(cfg["num_hidden_layers"]):
        hf = f"text_model.encoder.layers.{i}."
        oc = f"{prefix}transformer.resblocks.{i}."
        for a, b in (("layer_norm1", "ln_1"), ("layer_norm2", "ln_2"), ("self_attn.out_proj", "attn.out_proj"),
                     ("mlp.fc1", "mlp.c_fc"), ("mlp.fc2", "mlp.c_proj")):
            out[oc + b + ".weight"] = te[hf + a + ".weight"]
            out[oc + b + ".bias"] = te[hf + a + ".bias"]
        out[oc + "attn.in_proj_weight"] = np.concatenate(
            [te[hf + f"self_attn.{p}_proj.weight"] for p in "qkv"], axis=0)
        out[oc + "attn.in_proj_bias"] = np.concatenate(
            [te[hf + f"self_attn.{p}_proj.bias"] for p in "qkv"], axis=0)
    out[prefix + "ln_final.weight"] = te["text_model.final_layer_norm.weight"]
    out[prefix + "ln_final.bias"] = te["text_model.final_layer_norm.bias"]
    out[prefix + "text_projection"] = np.ascontiguousarray(te["text_projection.weight"].T)
    return out


# ----------------------------------------------------------------------------
# Files


def write_safetensors(path, tensors, dtype):
    """safetensors: u64 LE header length, JSON header (space-padded to 8 bytes), data.

    Tensors in name order, back to back (the format allows no holes); one dtype per
    file, so every tensor starts aligned to its element size."""
    np_dtype, st_dtype = {"f32": (np.float32, "F32"), "f16": (np.float16, "F16")}[dtype]
    header = {"__metadata__": {"format": "pt"}}
    blobs = []
    offset = 0
    for name in sorted(tensors):
        data = np.ascontiguousarray(tensors[name], dtype=np.dtype(np_dtype).newbyteorder("<")).tobytes()
        header[name] = {"dtype": st_dtype, "shape": list(tensors[name].shape),
                        "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for blob in blobs:
            f.write(blob)


def write_json(path, obj):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out_dir")
    ap.add_argument("--variant", choices=["sd1", "sdxl", "sd15-size"], default="sd1",
                    help="sd15-size: SD 1.5's real shapes (about 1.1 billion random weights; for bench/image)")
    ap.add_argument("--dtype", choices=["f32", "f16"], default="f32")
    ap.add_argument("--single-file", metavar="PATH", help="also write the original-layout checkpoint here")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from clip_vocab import build_vocab, write_tokenizer_files

    vocab, merges = build_vocab(" ".join(CORPUS.split()), NUM_MERGES)
    bos, eos = vocab["<|startoftext|>"], vocab["<|endoftext|>"]

    out = args.out_dir
    for sub in ["scheduler", "tokenizer", "text_encoder", "unet", "vae"] + (
            ["tokenizer_2", "text_encoder_2"] if args.variant == "sdxl" else []):
        os.makedirs(os.path.join(out, sub), exist_ok=True)

    write_json(os.path.join(out, "model_index.json"), model_index(args.variant))
    write_json(os.path.join(out, "scheduler", "scheduler_config.json"), scheduler_config())
    write_tokenizer_files(os.path.join(out, "tokenizer"), vocab, merges, "<|endoftext|>")

    if args.variant == "sd15-size":  # CLIP ViT-L/14's text tower
        te_cfg = clip_config(vocab, bos, eos, eos, 768, 3072, "quick_gelu", 768, False, heads=12, layers=12)
    else:
        te_cfg = clip_config(vocab, bos, eos, eos, 32, 64, "quick_gelu", 32, False)
    te = Params(args.seed, "text_encoder")
    clip_text_params(te, te_cfg)
    write_json(os.path.join(out, "text_encoder", "config.json"), te_cfg)
    write_safetensors(os.path.join(out, "text_encoder", "model.safetensors"), te.tensors, args.dtype)

    te2 = None
    if args.variant == "sdxl":
        write_tokenizer_files(os.path.join(out, "tokenizer_2"), vocab, merges, "!")
        te2_cfg = clip_config(vocab, bos, eos, vocab["!"], 64, 128, "gelu", 64, True)
        te2 = Params(args.seed, "text_encoder_2")
        clip_text_params(te2, te2_cfg, projection=True)
        write_json(os.path.join(out, "text_encoder_2", "config.json"), te2_cfg)
        write_safetensors(os.path.join(out, "text_encoder_2", "model.safetensors"), te2.tensors, args.dtype)

    u_cfg = unet_config(args.variant)
    unet = Params(args.seed, "unet")
    unet_params(unet, u_cfg)
    write_json(os.path.join(out, "unet", "config.json"), u_cfg)
    write_safetensors(os.path.join(out, "unet", "diffusion_pytorch_model.safetensors"), unet.tensors, args.dtype)

    v_cfg = vae_config(args.variant)
    vae = Params(args.seed, "vae")
    vae_params(vae, v_cfg)
    write_json(os.path.join(out, "vae", "config.json"), v_cfg)
    write_safetensors(os.path.join(out, "vae", "diffusion_pytorch_model.safetensors"), vae.tensors, args.dtype)

    if args.single_file:
        single = {}
        rules = ldm_unet_prefixes(u_cfg)
        for name, value in unet.tensors.items():
            single["model.diffusion_model." + map_by_prefix(name, rules)] = value
        single.update(ldm_vae_tensors(vae.tensors, v_cfg))
        if args.variant != "sdxl":
            for name, value in te.tensors.items():
                single["cond_stage_model.transformer." + name] = value
        else:
            for name, value in te.tensors.items():
                single["conditioner.embedders.0.transformer." + name] = value
            single.update(open_clip_tensors(te2.tensors, te2_cfg, "conditioner.embedders.1.model."))
        expected = len(unet.tensors) + len(vae.tensors) + len(te.tensors) + (
            len(te2.tensors) - 4 * te2_cfg["num_hidden_layers"] if te2 else 0)  # 6 q/k/v tensors -> 2 in_proj
        if len(single) != expected:
            raise SystemExit(f"single file: {len(single)} tensors, expected {expected} (a name collided)")
        parent = os.path.dirname(os.path.abspath(args.single_file))
        os.makedirs(parent, exist_ok=True)
        write_safetensors(args.single_file, single, args.dtype)


if __name__ == "__main__":
    main()
