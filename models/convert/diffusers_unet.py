"""diffusers `UNet2DConditionModel` / `UNet2DModel` (Karlo's decoder and upsamplers) → our `UNetConfig` and
`models.unet.UNet` tensors.

Karlo's UNets are guided-diffusion networks that diffusers regrouped into blocks; ours keep
guided-diffusion's flat layout, so the mapping is positional. With R = layers_per_block:
```
conv_in                          input_blocks.0.0
down_blocks.i.resnets.j          input_blocks.{1 + i(R+1) + j}.0      (.attentions.j → ….1)
down_blocks.i.downsamplers.0     input_blocks.{1 + i(R+1) + R}.0      (a ResnetBlock2D with down=True)
mid_block.resnets.0 / attentions.0 / resnets.1     middle_block.0 / .1 / .2
up_blocks.u.resnets.j            output_blocks.{u(R+1) + j}.0         (.attentions.j → ….1)
up_blocks.u.upsamplers.0         output_blocks.{u(R+1) + R}.{1 or 2}  (after the attention, if any)
conv_norm_out / conv_out         out.0 / out.2
```
Inside a ResnetBlock2D: norm1/conv1 → in_layers.0/.2, time_emb_proj → emb_layers.1, norm2 → out_norm,
conv2 → out_layers.2, conv_shortcut → skip. Inside an added-KV Attention: to_q/to_k/to_v → one packed
1x1 `qkv` convolution (q, k, v blocks of heads x head_dim, the same channel order), add_k_proj/add_v_proj
→ `encoder_kv`, to_out.0 → proj_out. Only the block types Karlo uses are accepted; anything else raises.
"""

from __future__ import annotations

from typing import Any

import torch

from models.config import UNetConfig
from models.convert.hf_files import ConversionError, TensorSource

# Config values our UNet computes with; a checkpoint that sets another value is refused.
REQUIRED = {
    "act_fn": "silu",
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "center_input_sample": False,
    "norm_eps": 1e-5,
    "mid_block_scale_factor": 1,
    "resnet_out_scale_factor": 1.0,
    "resnet_skip_time_act": False,
    "time_embedding_type": "positional",
    "time_embedding_dim": None,
    "time_embedding_act_fn": None,
    "timestep_post_act": None,
    "time_cond_proj_dim": None,
    "conv_in_kernel": 3,
    "conv_out_kernel": 3,
    "only_cross_attention": False,
    "dual_cross_attention": False,
    "cross_attention_norm": None,
    "encoder_hid_dim": None,
    "addition_embed_type": None,
    "class_embeddings_concat": False,
    "upcast_attention": False,  # softmax precision only; refused so a surprise is loud
}
PLAIN_DOWN, PLAIN_UP = "ResnetDownsampleBlock2D", "ResnetUpsampleBlock2D"
ATTN_DOWN, ATTN_UP, ATTN_MID = (
    "SimpleCrossAttnDownBlock2D",
    "SimpleCrossAttnUpBlock2D",
    "UNetMidBlock2DSimpleCrossAttn",
)


def unet_config(document: dict[str, Any], kind: str, **decoder_fields: Any) -> UNetConfig:
    """Our UNetConfig for a diffusers UNet config.json (`kind` "decoder" or "sr")."""
    for key, value in REQUIRED.items():
        if document.get(key, value) != value:
            raise ConversionError(
                f"UNet config {key}={document[key]!r} is not supported (expected {value!r})"
            )
    class_embed = document.get("class_embed_type")
    if class_embed != ("identity" if kind == "decoder" else None):
        raise ConversionError(f"UNet class_embed_type {class_embed!r} is not supported for a {kind}")
    widths = list(document["block_out_channels"])
    if any(w % widths[0] for w in widths):
        raise ConversionError(f"block_out_channels {widths} are not multiples of the first")
    layers = document.get("layers_per_block", 2)
    if not isinstance(layers, int):
        raise ConversionError(f"layers_per_block {layers} varies per level; ours is one number")
    down, up = list(document["down_block_types"]), list(document["up_block_types"])
    allowed_down = (PLAIN_DOWN, ATTN_DOWN) if kind == "decoder" else (PLAIN_DOWN,)
    if any(t not in allowed_down for t in down):
        raise ConversionError(f"down blocks {down}: only {allowed_down} are supported")
    mirrored = [ATTN_UP if t == ATTN_DOWN else PLAIN_UP for t in reversed(down)]
    if up != mirrored:
        raise ConversionError(f"up blocks {up} do not mirror the down blocks {down}")
    attends = [t == ATTN_DOWN for t in down]
    if kind == "decoder":
        if document.get("mid_block_type") != (ATTN_MID if any(attends) else "UNetMidBlock2D"):
            raise ConversionError(f"mid block {document.get('mid_block_type')!r} does not fit the levels")
        head_dim = document.get("attention_head_dim", 8)
        if not isinstance(head_dim, int):
            head_dims = set(head_dim)
            if len(head_dims) != 1:
                raise ConversionError(f"attention_head_dim {head_dim} varies per level; ours is one number")
            head_dim = head_dims.pop()
    else:
        if document.get("add_attention", True):
            raise ConversionError("an upsampler with mid-block attention is not supported (Karlo has none)")
        head_dim = 64  # unused without attention
    size = document["sample_size"]
    return UNetConfig(
        kind=kind,
        image_size=size if isinstance(size, int) else size[0],
        in_channels=document.get("in_channels", 4),
        out_channels=document.get("out_channels", 4),
        model_channels=widths[0],
        channel_mult=tuple(w // widths[0] for w in widths),
        num_res_blocks=layers,
        attention_resolutions=tuple(size // 2**i for i, a in enumerate(attends) if a),
        num_head_channels=head_dim,
        norm_groups=document.get("norm_num_groups", 32),
        scale_shift_norm=document.get("resnet_time_scale_shift", "default") == "scale_shift",
        resblock_updown=True,
        **decoder_fields,
    )


def unet_tensors(take: TensorSource, config: UNetConfig) -> dict[str, torch.Tensor]:
    """Our UNet body's tensors (time embedding, blocks, output) from a diffusers UNet's."""
    out: dict[str, torch.Tensor] = {}
    r, levels = config.num_res_blocks, len(config.channel_mult)

    def copy(ours: str, theirs: str) -> None:
        for kind in ("weight", "bias"):
            out[f"{ours}.{kind}"] = take(f"{theirs}.{kind}")

    def resnet(ours: str, theirs: str) -> None:
        for a, b in (("in_layers.0", "norm1"), ("in_layers.2", "conv1"), ("emb_layers.1", "time_emb_proj")):
            copy(f"{ours}.{a}", f"{theirs}.{b}")
        for a, b in (("out_norm", "norm2"), ("out_layers.2", "conv2")):
            copy(f"{ours}.{a}", f"{theirs}.{b}")
        if f"{theirs}.conv_shortcut.weight" in take:
            copy(f"{ours}.skip", f"{theirs}.conv_shortcut")

    def attention(ours: str, theirs: str) -> None:
        copy(f"{ours}.norm", f"{theirs}.group_norm")
        for kind in ("weight", "bias"):
            qkv = torch.cat([take(f"{theirs}.to_{p}.{kind}") for p in ("q", "k", "v")])  # [3C, C] / [3C]
            out[f"{ours}.qkv.{kind}"] = qkv[..., None] if kind == "weight" else qkv  # Conv1d [3C, C, 1]
            kv = torch.cat([take(f"{theirs}.add_{p}_proj.{kind}") for p in ("k", "v")])  # [2C, ctx]
            out[f"{ours}.encoder_kv.{kind}"] = kv[..., None] if kind == "weight" else kv
            proj = take(f"{theirs}.to_out.0.{kind}")
            out[f"{ours}.proj_out.{kind}"] = proj[..., None] if kind == "weight" else proj

    copy("time_embed.0", "time_embedding.linear_1")
    copy("time_embed.2", "time_embedding.linear_2")
    copy("input_blocks.0.0", "conv_in")
    resolution = config.image_size
    for i in range(levels):
        attends = resolution in config.attention_resolutions
        for j in range(r):
            block = f"input_blocks.{1 + i * (r + 1) + j}"
            resnet(f"{block}.0", f"down_blocks.{i}.resnets.{j}")
            if attends:
                attention(f"{block}.1", f"down_blocks.{i}.attentions.{j}")
        if i < levels - 1:
            resnet(f"input_blocks.{1 + i * (r + 1) + r}.0", f"down_blocks.{i}.downsamplers.0")
            resolution //= 2
    resnet("middle_block.0", "mid_block.resnets.0")
    if config.attention_resolutions:
        attention("middle_block.1", "mid_block.attentions.0")
        resnet("middle_block.2", "mid_block.resnets.1")
    else:
        resnet("middle_block.1", "mid_block.resnets.1")
    for u in range(levels):
        attends = resolution in config.attention_resolutions
        for j in range(r + 1):
            block = f"output_blocks.{u * (r + 1) + j}"
            resnet(f"{block}.0", f"up_blocks.{u}.resnets.{j}")
            if attends:
                attention(f"{block}.1", f"up_blocks.{u}.attentions.{j}")
        if u < levels - 1:
            resnet(f"output_blocks.{u * (r + 1) + r}.{2 if attends else 1}", f"up_blocks.{u}.upsamplers.0")
            resolution *= 2
    copy("out.0", "conv_norm_out")
    copy("out.2", "conv_out")
    return out
