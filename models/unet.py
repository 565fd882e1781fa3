"""GLIDE/ADM UNets (Dhariwal & Nichol 2021; Nichol et al. 2022) for the decoder and the two upsamplers.

`UNet` is the plain denoiser `(x_t, t) → output`: residual blocks whose GroupNorm is scaled and shifted
by the timestep embedding, strided-conv downsampling, nearest+conv upsampling, and self-attention at the
configured resolutions (heads of `num_head_channels`). Conditioned models are small subclasses whose
`forward` adds inputs:
- `DecoderUNet` (unCLIP §2.2): the CLIP image embedding is added to the timestep embedding and also
  projected to 4 context tokens put in front of the projected CLIP text tokens; every attention layer's
  keys/values are `[context tokens, spatial tokens]`. Optional GLIDE inpainting input (7 channels), and an
  optional caption encoder (`caption_layers`) over the projected text tokens.
- `SuperResUNet`: the low-resolution image, upsampled bilinearly, is concatenated to x_t.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from models.attention import attention
from models.clip import Transformer
from models.config import UNetConfig
from models.nn import LayerNorm, timestep_embedding


class GroupNorm(nn.GroupNorm):
    """GroupNorm whose statistics are float32 or wider whatever the dtype.

    bf16 runs the native kernel: it accumulates the mean and variance in float32 on CPU and CUDA, and
    bf16 has float32's range, so an upcast copy of every activation buys nothing. fp16 (5 exponent bits)
    is normalised in float32 and cast back; float64 stays float64.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _slow_channels_last(x):
            return self._normalise(x.contiguous()).contiguous(memory_format=torch.channels_last)
        return self._normalise(x)

    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.bfloat16:
            return F.group_norm(x, self.num_groups, self.weight.to(x.dtype), self.bias.to(x.dtype), self.eps)
        wide = torch.promote_types(x.dtype, torch.float32)
        normed = F.group_norm(x.to(wide), self.num_groups, self.weight.to(wide), self.bias.to(wide), self.eps)
        return normed.to(x.dtype)


# torch's channels-last GroupNorm on the CPU is slow in bf16 on small maps: [3, 32, 16, 16] takes 416 us
# against 27 us for a copy to NCHW normalised there and copied back; from 32x32 up the channels-last
# kernel is the faster (2-core Xeon, torch 2.13). The shipped model, 256 px, bf16: 0.73 -> 0.68 s.
SMALL_MAP = 16 * 16


def _slow_channels_last(x: torch.Tensor) -> bool:
    return (
        x.device.type == "cpu"
        and x.dtype == torch.bfloat16
        and x.dim() == 4
        and x.shape[-1] * x.shape[-2] <= SMALL_MAP
        and not x.is_contiguous()
        and x.is_contiguous(memory_format=torch.channels_last)
    )


def group_norm(channels: int, groups: int) -> GroupNorm:
    return GroupNorm(math.gcd(groups, channels), channels)


def zero_module(module: nn.Module) -> nn.Module:
    """Output layers start at zero so every residual branch starts as the identity."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    """scale_shift: the timestep embedding scales and shifts the second norm (ADM), else it is added
    before it (DDPM). resample "up"/"down": the block itself doubles/halves the resolution, nearest
    upsampling or 2x2 average pooling after the first norm (BigGAN-style, guided-diffusion's
    resblock_updown)."""

    def __init__(
        self,
        channels: int,
        out_channels: int,
        emb_channels: int,
        dropout: float,
        groups: int,
        scale_shift: bool = True,
        resample: str | None = None,
    ) -> None:
        super().__init__()
        self.scale_shift = scale_shift
        self.resample = resample
        self.in_layers = nn.Sequential(
            group_norm(channels, groups), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1)
        )
        emb_out = 2 * out_channels if scale_shift else out_channels
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, emb_out))
        self.out_norm = group_norm(out_channels, groups)
        self.out_layers = nn.Sequential(
            nn.SiLU(), nn.Dropout(dropout), zero_module(nn.Conv2d(out_channels, out_channels, 3, padding=1))
        )
        self.skip = nn.Identity() if channels == out_channels else nn.Conv2d(channels, out_channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """x `[B, C, H, W]`, emb `[B, T]` → `[B, C_out, H', W']` (H' = H, 2H or H/2 with resample)."""
        if self.resample is None:
            h = self.in_layers(x)
        else:
            h = self.in_layers[-1](_resample(self.in_layers[:-1](x), self.resample))
            x = _resample(x, self.resample)
        emb_out = self.emb_layers(emb)[:, :, None, None]
        if self.scale_shift:
            scale, shift = emb_out.chunk(2, dim=1)
            h = self.out_norm(h) * (1 + scale) + shift
        else:
            h = self.out_norm(h + emb_out)
        return self.skip(x) + self.out_layers(h)


def _resample(x: torch.Tensor, direction: str) -> torch.Tensor:
    if direction == "up":
        return F.interpolate(x, scale_factor=2, mode="nearest")
    return F.avg_pool2d(x, kernel_size=2, stride=2)


class AttentionBlock(nn.Module):
    """Self-attention over the H*W positions; with a context, keys/values are `[context, spatial]`.

    The projections are stored as 1x1 Conv1d weights `[O, I, 1]` (the layout of GLIDE/Karlo checkpoints
    and of ours) but run as `F.linear` on tokens `[B, HW, C]`: one matmul each, and q/k/v come out
    with D innermost, as SDPA's fast kernels and the Triton kernel want, without a copy.
    """

    def __init__(self, channels: int, head_channels: int, groups: int, context_width: int = 0) -> None:
        super().__init__()
        if channels % head_channels:
            raise ValueError(f"{channels} channels are not a multiple of num_head_channels {head_channels}")
        self.heads = channels // head_channels
        self.norm = group_norm(channels, groups)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.encoder_kv = nn.Conv1d(context_width, 2 * channels, 1) if context_width else None
        self.proj_out = zero_module(nn.Conv1d(channels, channels, 1))

    def forward(
        self, x: torch.Tensor, context: torch.Tensor | None = None, context_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """x `[B, C, H, W]`, context `[B, N, context_width]`, context_mask `[B, N]` bool (True = real)."""
        b, c, height, width = x.shape
        heads, d = self.heads, c // self.heads
        tokens = self.norm(x).flatten(2).transpose(1, 2)  # [B, HW, C]
        qkv = _pointwise(tokens, self.qkv).view(b, -1, 3, heads, d)  # channel = (3, heads, d), as the conv
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x [B, heads, HW, D], D innermost
        key_padding_mask = None
        if self.encoder_kv is not None and context is not None:
            context_kv = _pointwise(context, self.encoder_kv).view(b, -1, 2, heads, d)  # [B, N, 2, heads, D]
            ck, cv = context_kv.permute(2, 0, 3, 1, 4).unbind(0)  # 2 x [B, heads, N, D]
            k, v = torch.cat([ck, k], dim=2), torch.cat([cv, v], dim=2)  # [B, heads, N + HW, D]
            if context_mask is not None:
                key_padding_mask = F.pad(context_mask.to(x.device), (0, height * width), value=True)
        # The spatial keys are never padded, so every query row sees a key.
        out = attention(q, k, v, key_padding_mask=key_padding_mask, rows_see_a_key=True)  # [B, heads, HW, D]
        out = _pointwise(out.transpose(1, 2).reshape(b, height * width, c), self.proj_out)  # [B, HW, C]
        return x + out.transpose(1, 2).reshape(b, c, height, width)


def _pointwise(tokens: torch.Tensor, conv: nn.Conv1d) -> torch.Tensor:
    """A 1x1 Conv1d applied to tokens `[B, N, I]` as a linear layer → `[B, N, O]`."""
    return F.linear(tokens, conv.weight.squeeze(-1), conv.bias)


class Downsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Upsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class TimestepSequential(nn.Sequential):
    """Runs layers in order, handing each the inputs it takes (emb to ResBlocks, context to attention)."""

    def forward(  # type: ignore[override]
        self,
        x: torch.Tensor,
        emb: torch.Tensor,
        context: torch.Tensor | None,
        context_mask: torch.Tensor | None,
    ) -> torch.Tensor:
        for layer in self:
            if isinstance(layer, ResBlock):
                x = layer(x, emb)
            elif isinstance(layer, AttentionBlock):
                x = layer(x, context, context_mask)
            else:
                x = layer(x)
        return x


class UNet(nn.Module):
    def __init__(self, config: UNetConfig, context_width: int = 0) -> None:
        super().__init__()
        self.config = config
        self.in_channels = config.in_channels
        self.out_channels = config.out_channels
        mc, groups, patch = config.model_channels, config.norm_groups, config.patch_size
        self.time_embed_dim = 4 * mc
        self.time_embed = nn.Sequential(
            nn.Linear(mc, self.time_embed_dim), nn.SiLU(), nn.Linear(self.time_embed_dim, self.time_embed_dim)
        )

        def res(cin: int, cout: int, resample: str | None = None) -> ResBlock:
            return ResBlock(
                cin, cout, self.time_embed_dim, config.dropout, groups, config.scale_shift_norm, resample
            )

        def attn(channels: int) -> AttentionBlock:
            return AttentionBlock(channels, min(channels, config.num_head_channels), groups, context_width)

        self.input_blocks = nn.ModuleList(
            [TimestepSequential(nn.Conv2d(config.in_channels * patch**2, mc, 3, padding=1))]
        )
        skip_channels, ch, resolution = [mc], mc, config.image_size // patch
        # Zero at first, so weights trained without it continue unchanged (`UNetConfig.position_embedding`).
        self.position = None
        if config.position_embedding:
            self.position = nn.Parameter(torch.zeros(mc, resolution, resolution))
        for level, mult in enumerate(config.channel_mult):
            for _ in range(config.num_res_blocks):
                layers: list[nn.Module] = [res(ch, mult * mc)]
                ch = mult * mc
                if resolution in config.attention_resolutions:
                    layers.append(attn(ch))
                self.input_blocks.append(TimestepSequential(*layers))
                skip_channels.append(ch)
            if level < len(config.channel_mult) - 1:
                down = res(ch, ch, "down") if config.resblock_updown else Downsample(ch)
                self.input_blocks.append(TimestepSequential(down))
                skip_channels.append(ch)
                resolution //= 2

        # The middle block attends only when the model has attention at all (sr1024 is convolutions only).
        middle: list[nn.Module] = [
            res(ch, ch),
            *([attn(ch)] if config.attention_resolutions else []),
            res(ch, ch),
        ]
        self.middle_block = TimestepSequential(*middle)

        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(config.channel_mult))):
            for i in range(config.num_res_blocks + 1):
                layers = [res(ch + skip_channels.pop(), mult * mc)]
                ch = mult * mc
                if resolution in config.attention_resolutions:
                    layers.append(attn(ch))
                if level and i == config.num_res_blocks:
                    layers.append(res(ch, ch, "up") if config.resblock_updown else Upsample(ch))
                    resolution *= 2
                self.output_blocks.append(TimestepSequential(*layers))

        self.out = nn.Sequential(  # out_channels per pixel of each patch
            group_norm(ch, groups),
            nn.SiLU(),
            zero_module(nn.Conv2d(ch, config.out_channels * patch**2, 3, padding=1)),
        )

    @property
    def dtype(self) -> torch.dtype:
        return self.time_embed[0].weight.dtype

    def timestep_embed(self, t: torch.Tensor) -> torch.Tensor:
        """t `[B]` → `[B, 4 * model_channels]`."""
        return self.time_embed(timestep_embedding(t, self.config.model_channels).to(self.dtype))

    def denoise(
        self,
        x: torch.Tensor,
        emb: torch.Tensor,
        context: torch.Tensor | None = None,
        context_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The UNet body: x `[B, in_channels, H, W]`, emb `[B, T]` → `[B, out_channels, H, W]`."""
        h = F.pixel_unshuffle(x.to(self.dtype), self.config.patch_size)
        skips = []
        for i, block in enumerate(self.input_blocks):
            h = block(h, emb, context, context_mask)
            if i == 0 and self.position is not None:
                h = h + self.position.to(h.dtype)  # [C, H', W'], the same for every row
            skips.append(h)
        h = self.middle_block(h, emb, context, context_mask)
        for block in self.output_blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), emb, context, context_mask)
        return F.pixel_shuffle(self.out(h), self.config.patch_size)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.denoise(x, self.timestep_embed(t))


CAPTION_HEAD_WIDTH = 32


def caption_encoder(width: int, layers: int) -> Transformer | None:
    """`layers` pre-norm transformer blocks over caption tokens `[B, L, width]`, each block's output
    projections zero: a new encoder is the identity, so it can be added to a trained decoder and
    fine-tuned from exactly that decoder's behaviour."""
    if not layers:
        return None
    encoder = Transformer(width, layers, max(1, width // CAPTION_HEAD_WIDTH), 4 * width, "gelu")
    for block in encoder.resblocks:
        for projection in (block.attn.out_proj, block.mlp.c_proj):
            nn.init.zeros_(projection.weight)
            nn.init.zeros_(projection.bias)
    return encoder


class DecoderUNet(UNet):
    """The unCLIP decoder: x_t `[B, 3, H, W]` conditioned on a CLIP image embedding and CLIP text tokens.

    Guidance "null": image_embed zeros and text_mask all False (the CLIP tokens keep every row non-empty).
    """

    def __init__(self, config: UNetConfig) -> None:
        super().__init__(config, context_width=config.context_width)
        self.supports_inpainting = config.in_channels == 7
        self.clip_context_tokens = config.clip_context_tokens
        self.clip_time_proj = nn.Linear(config.clip_embed_dim, self.time_embed_dim)
        self.clip_tokens_proj = nn.Linear(
            config.clip_embed_dim, config.clip_context_tokens * config.context_width
        )
        self.text_proj = nn.Linear(config.text_width, config.context_width)
        self.text_norm = LayerNorm(config.context_width)
        self.caption_encoder = caption_encoder(config.context_width, config.caption_layers)
        # Karlo's conditioning (UNetConfig options): the end-of-text state projected into the timestep
        # embedding (its CLIP text projection folded in), a learned guidance-null image embedding, and
        # the empty prompt's leading token states as the null text.
        if config.text_embed_to_time:
            self.text_time_proj = nn.Linear(config.text_width, self.time_embed_dim)
        if config.learned_null_image:
            self.null_image_embed = nn.Parameter(torch.zeros(config.clip_embed_dim))
        if config.null_text_tokens:
            self.null_text_states = nn.Parameter(torch.zeros(config.null_text_tokens, config.text_width))

    def forward(  # type: ignore[override]
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        image_embed: torch.Tensor,
        text_states: torch.Tensor,
        text_mask: torch.Tensor,
        inpaint_image: torch.Tensor | None = None,
        inpaint_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x `[B, 3, H, W]`, t `[B]`, image_embed `[B, E]`, text_states `[B, L, W]`, text_mask `[B, L]`.

        Inpainting (GLIDE): inpaint_image `[B, 3, H, W]` in [-1, 1] and inpaint_mask `[B, 1, H, W]` with
        1 where the image is known (kept) and 0 where it is to be filled. An inpainting model given
        neither sees "nothing known" and generates freely.
        """
        dtype = self.dtype
        image_embed, text_states, text_mask = self._with_learned_null(
            image_embed.to(dtype), text_states.to(dtype), text_mask.to(x.device).bool()
        )
        emb = self.timestep_embed(t) + self.clip_time_proj(image_embed)  # [B, T]
        if self.config.text_embed_to_time:
            eot = (text_mask.sum(dim=1) - 1).clamp(min=0)  # [B]; the mask is True up to the end-of-text
            emb = emb + self.text_time_proj(text_states[torch.arange(x.shape[0], device=x.device), eot])
        clip_tokens = self.clip_tokens_proj(image_embed).view(x.shape[0], self.clip_context_tokens, -1)
        text_tokens = self.text_norm(self.text_proj(text_states))  # [B, L, context_width]
        if self.caption_encoder is not None:  # a dropped caption (no real token) gives zeros; masked below
            text_tokens = self.caption_encoder(text_tokens, key_padding_mask=text_mask)
        context = torch.cat([clip_tokens, text_tokens], dim=1)  # [B, 4 + L, context_width]
        context_mask = F.pad(text_mask, (self.clip_context_tokens, 0), value=True)  # [B, 4 + L]
        return self.denoise(
            self._with_inpainting_input(x, inpaint_image, inpaint_mask), emb, context, context_mask
        )

    def _with_learned_null(
        self, image_embed: torch.Tensor, text_states: torch.Tensor, text_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Rows holding the guidance null (all-zero image_embed, all-False text_mask) get the learned
        null instead, when the config has one; other rows pass unchanged."""
        if self.config.learned_null_image:
            null_image = (image_embed == 0).all(dim=-1, keepdim=True)  # [B, 1]
            image_embed = torch.where(null_image, self.null_image_embed, image_embed)
        if self.config.null_text_tokens:
            k, length = self.config.null_text_tokens, text_states.shape[1]
            null_text = ~text_mask.any(dim=-1)  # [B]
            null_states = F.pad(self.null_text_states, (0, 0, 0, length - k))  # [L, W], masked past k
            text_states = torch.where(null_text[:, None, None], null_states, text_states)
            null_mask = torch.arange(length, device=text_mask.device) < k  # [L]
            text_mask = torch.where(null_text[:, None], null_mask, text_mask)
        return image_embed, text_states, text_mask

    def _with_inpainting_input(
        self, x: torch.Tensor, image: torch.Tensor | None, mask: torch.Tensor | None
    ) -> torch.Tensor:
        if (image is None) != (mask is None):
            raise ValueError("inpaint_image and inpaint_mask go together")
        if not self.supports_inpainting:
            if image is not None:
                raise ValueError("this decoder was not trained with the inpainting input (in_channels 3)")
            return x
        if image is None or mask is None:
            image = torch.zeros_like(x)
            mask = torch.zeros_like(x[:, :1])
        mask = mask.to(x.dtype)
        return torch.cat([x, image.to(x.dtype) * mask, mask], dim=1)  # [B, 7, H, W]


class SuperResUNet(UNet):
    """An upsampler: x_t `[B, 3, H, W]` conditioned on the low-resolution image `[B, 3, h, w]`."""

    def upsample_condition(self, low_res: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """low_res `[B, 3, h, w]` → `[B, 3, *size]` in float32 or wider, what every step concatenates to
        x_t (a sampler computes it once per stage, not once per step)."""
        mode = self.config.low_res_upsample
        # Karlo upsamples bicubic with antialias (PIL's a = -0.5 kernel, not the plain -0.75 one). In
        # float32 (float64 stays) whatever the weights: CPU has no bf16 antialiased bicubic kernel.
        wide = low_res.to(torch.promote_types(low_res.dtype, torch.float32))
        return F.interpolate(wide, size, mode=mode, align_corners=False, antialias=mode == "bicubic")

    def forward(  # type: ignore[override]
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        low_res: torch.Tensor | None = None,
        upsampled: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x `[B, 3, H, W]`, t `[B]` and either low_res `[B, 3, h, w]` or, computed once for every step of
        a sampler, upsampled = `upsample_condition(low_res, (H, W))`."""
        if (low_res is None) == (upsampled is None):
            raise ValueError("give the upsampler low_res or upsampled, one of the two")
        if upsampled is None:
            upsampled = self.upsample_condition(low_res, tuple(x.shape[-2:]))
        return super().forward(torch.cat([x, upsampled.to(x.dtype)], dim=1), t)
