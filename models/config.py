"""Configurations of every network in the stack: plain dataclasses that round-trip through JSON.

`UnCLIPConfig.to_dict()` is what a checkpoint's `unclip.json` holds; `UnCLIPConfig.from_dict` reads it
back. Lists in JSON become tuples here so configs stay hashable and comparable.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Self

from models.contract import Sampling

SCHEDULES = ("cosine", "linear")
PREDICTIONS = ("eps", "x0")
ACTIVATIONS = ("quick_gelu", "gelu")
TEXT_EMBED_SOURCES = ("embeds", "eot_state")
UPSAMPLE_MODES = ("bilinear", "bicubic")
UNET_KINDS = ("decoder", "sr")
RESAMPLE_FILTERS = ("nearest", "bilinear", "bicubic", "lanczos", "box", "hamming")
# The RGB statistics OpenAI's CLIP was trained with, on images in [0, 1].
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class _JSONConfig:
    """asdict / from_dict for flat dataclasses whose tuple fields arrive from JSON as lists."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        names = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise ValueError(f"{cls.__name__}: unknown field(s) {unknown}")
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        return cls(**values)


@dataclass
class DiffusionConfig(_JSONConfig):
    """How a component was trained; the sampler reads it."""

    schedule: str = "cosine"
    timesteps: int = 1000
    predict: str = "eps"
    learned_variance: bool = False  # True: the model outputs 2*C channels (eps, v) as improved DDPM / Karlo
    # Predicted x0 is clamped to [-r, r] while sampling; None: the sampler's default (images: [-1, 1]).
    # Karlo's prior sets its scheduler's clip_sample_range.
    x0_clip_range: float | None = None
    # Learned variance: clamp the interpolant v to [-1, 1] so that the variance stays within [beta_tilde,
    # beta] whatever the model outputs (ours); False uses v as the model gives it (Karlo's scheduler).
    clamp_learned_variance: bool = True

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.predict not in PREDICTIONS:
            raise ValueError(f"predict must be one of {PREDICTIONS}, got {self.predict!r}")


@dataclass
class CLIPConfig(_JSONConfig):
    """OpenAI CLIP (ViT image tower) hyper-parameters under their OpenAI names."""

    embed_dim: int = 512
    image_size: int = 224
    patch_size: int = 32
    vision_width: int = 768
    vision_layers: int = 12
    vision_heads: int = 12
    vocab_size: int = 49408
    context_length: int = 77
    text_width: int = 512
    text_layers: int = 12
    text_heads: int = 8
    activation: str = "quick_gelu"  # OpenAI CLIP: quick_gelu; some HF/OpenCLIP models: gelu
    layer_norm_eps: float = 1e-5
    # False: encode_image returns the raw projection, not a unit vector (Karlo's prior and decoder were
    # trained on raw ViT-L/14 image embeddings); whoever needs a direction normalises it.
    normalize_image_embeds: bool = True
    # Hidden width of each tower's MLP; None: 4 x the tower's width (OpenAI's CLIPs). OpenCLIP ViT-bigG/14:
    # width 1664, MLP 8192.
    text_mlp_width: int | None = None
    vision_mlp_width: int | None = None
    # False: the text tower only (Karlo's text-to-image repository publishes no image encoder); the vision_*
    # and image_* fields then describe nothing, and the operations that encode images are refused.
    image_encoder: bool = True
    # How a picture becomes the vision tower's input (CLIPImageProcessor's preprocessor_config.json when
    # imported): its shorter side resized to `image_resize` with `image_resample`, then centre-cropped to
    # image_size; None: the whole picture squashed to image_size² (no crop). Then (x - mean) / std per
    # channel on [0, 1] values.
    image_resize: int | None = None
    image_resample: str = "bicubic"
    image_mean: tuple[float, ...] = CLIP_MEAN
    image_std: tuple[float, ...] = CLIP_STD

    def __post_init__(self) -> None:
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {self.activation!r}")
        if self.image_size % self.patch_size:
            raise ValueError(
                f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}"
            )
        for tower, width, heads in (
            ("text", self.text_width, self.text_heads),
            ("vision", self.vision_width, self.vision_heads),
        ):
            if width % heads:
                raise ValueError(f"{tower} width {width} is not divisible by its {heads} heads")
        if self.image_resample not in RESAMPLE_FILTERS:
            raise ValueError(f"image_resample must be one of {RESAMPLE_FILTERS}, got {self.image_resample!r}")
        if self.image_resize is not None and self.image_resize < self.image_size:
            raise ValueError(f"image_resize {self.image_resize} is below image_size {self.image_size}")
        if len(self.image_mean) != 3 or len(self.image_std) != 3 or min(self.image_std) <= 0:
            raise ValueError("image_mean and image_std need three values, std above 0")

    @property
    def text_mlp(self) -> int:
        return self.text_mlp_width or 4 * self.text_width

    @property
    def vision_mlp(self) -> int:
        return self.vision_mlp_width or 4 * self.vision_width


@dataclass
class PriorConfig(_JSONConfig):
    """The decoder-only causal transformer prior over CLIP embeddings of size `embed_dim`."""

    embed_dim: int = 512  # E, the CLIP joint-space size
    text_width: int = 512  # W, the CLIP text transformer's width (its token states)
    context_length: int = 77
    width: int = 1024
    layers: int = 12
    heads: int = 16
    embed_scale: float | None = None  # None: sqrt(embed_dim), the paper's scale of unit CLIP vectors
    # Options that reproduce Karlo's prior (kept off for our own checkpoints):
    # text_embed_from "eot_state": the text embedding token projects the end-of-text token state
    # (CLIP's text projection folded into `text_embed_proj`, i.e. the raw, unnormalised text embedding).
    text_embed_from: str = "embeds"
    # latent_stats: diffusion space is (z - clip_mean) / clip_std per dimension (stored parameters)
    # instead of z * embed_scale.
    latent_stats: bool = False
    # null_text_tokens k: rows with dropped text attend to the first k learned null tokens only (Karlo's
    # null is the empty prompt, SOT + EOT); None: to all of them.
    null_text_tokens: int | None = None
    # How many embeddings the pipeline samples per item, keeping the one closest to the text (unCLIP
    # §2.1); None: the pipeline's default (2). Karlo samples 1.
    sample_candidates: int | None = None

    def __post_init__(self) -> None:
        if self.sample_candidates is not None and self.sample_candidates < 1:
            raise ValueError(f"sample_candidates must be at least 1, got {self.sample_candidates}")
        if self.embed_scale is None:
            self.embed_scale = math.sqrt(self.embed_dim)
        if self.width % self.heads:
            raise ValueError(f"prior width {self.width} is not divisible by heads {self.heads}")
        if self.text_embed_from not in TEXT_EMBED_SOURCES:
            raise ValueError(
                f"text_embed_from must be one of {TEXT_EMBED_SOURCES}, got {self.text_embed_from!r}"
            )


@dataclass
class UNetConfig(_JSONConfig):
    """A GLIDE/ADM UNet; `kind` picks the conditioned subclass (decoder: CLIP + text, sr: low-res image).

    `in_channels` is what the first convolution sees: decoder 3, or 7 with GLIDE's inpainting input
    (x_t, masked image, mask); super-resolution 6 (x_t and the upsampled low-resolution image).
    """

    kind: str = "decoder"
    image_size: int = 64
    in_channels: int = 3
    out_channels: int = 3  # 6 with learned variance
    model_channels: int = 128
    channel_mult: tuple[int, ...] = (1, 2, 3, 4)
    num_res_blocks: int = 2
    attention_resolutions: tuple[int, ...] = (32, 16, 8)  # in pixels of the body (image_size / patch_size)
    num_head_channels: int = 64
    dropout: float = 0.0
    norm_groups: int = 32
    scale_shift_norm: bool = True  # False: the timestep embedding is added before the second norm
    resblock_updown: bool = False  # True: resample inside residual blocks (BigGAN / Karlo), not with convs
    # Decoder only: the conditioning it attends to.
    clip_embed_dim: int = 0  # E
    text_width: int = 0  # W of the CLIP token states
    context_width: int = 0  # width the text tokens and CLIP tokens are projected to
    clip_context_tokens: int = 4
    # Bidirectional transformer blocks over the projected caption tokens, trained with the decoder (GLIDE's
    # decoder reads its caption through its own transformer; CLIP trained its causal token states only
    # through the end-of-text token). 0: the tokens go to attention as projected.
    caption_layers: int = 0
    # Options that reproduce Karlo's decoder (kept off for our own checkpoints):
    text_embed_to_time: bool = False  # project the end-of-text token state into the timestep embedding
    learned_null_image: bool = False  # an all-zero image_embed row (the guidance null) becomes a learned one
    null_text_tokens: int = 0  # k > 0: a row whose text_mask is all False sees k stored empty-prompt states
    # Upsamplers only: how the low-resolution image is brought to the output size.
    low_res_upsample: str = "bilinear"
    # p > 1: the body runs at image_size / p on p×p pixel patches folded into channels (pixel unshuffle
    # in, pixel shuffle out), p² times cheaper; flat-colour pictures lose nothing by it.
    patch_size: int = 1
    # A learned embedding per body pixel, added after the first convolution (CoordConv's point, Liu et al.
    # 2018): convolutions know where they are only from their zero padding, yet a decoder painting shapes
    # out of pure noise from a global vector (z_i) has to place them.
    position_embedding: bool = False

    def __post_init__(self) -> None:
        if self.kind not in UNET_KINDS:
            raise ValueError(f"UNet kind must be one of {UNET_KINDS}, got {self.kind!r}")
        if self.kind == "decoder" and self.in_channels not in (3, 7):
            raise ValueError(f"a decoder takes 3 or 7 (inpainting) input channels, got {self.in_channels}")
        if self.kind == "decoder" and min(self.clip_embed_dim, self.text_width, self.context_width) <= 0:
            raise ValueError("a decoder needs clip_embed_dim, text_width and context_width")
        if self.caption_layers and (self.kind != "decoder" or self.caption_layers < 0):
            raise ValueError(f"caption_layers is a decoder's, and not negative: got {self.caption_layers}")
        if self.kind == "sr" and self.in_channels != 6:
            raise ValueError(f"an upsampler takes 6 input channels (x_t + low-res), got {self.in_channels}")
        if self.low_res_upsample not in UPSAMPLE_MODES:
            raise ValueError(
                f"low_res_upsample must be one of {UPSAMPLE_MODES}, got {self.low_res_upsample!r}"
            )
        if self.out_channels not in (3, 6):
            raise ValueError(f"out_channels must be 3 or 6 (learned variance), got {self.out_channels}")
        if self.patch_size < 1 or self.image_size % self.patch_size:
            raise ValueError(f"patch_size {self.patch_size} does not divide image_size {self.image_size}")


@dataclass
class ReaderConfig(_JSONConfig):
    """The prompt reader (models/reader.py): a bidirectional transformer over CLIP token ids, and the facts
    of the closed world it reads (each a tuple of names)."""

    vocab_size: int
    context_length: int
    colours: tuple[str, ...]
    kinds: tuple[str, ...]
    sizes: tuple[str, ...]
    positions: tuple[str, ...]
    width: int = 128
    layers: int = 4
    heads: int = 4
    # A reading is used only when each fact it states is at least this likely; else the prompt is drawn
    # as given.
    confidence: float = 0.5

    def __post_init__(self) -> None:
        if self.width % self.heads:
            raise ValueError(f"reader width {self.width} is not a multiple of heads {self.heads}")
        if not 0 < self.confidence <= 1:
            raise ValueError(f"reader confidence must be in (0, 1], got {self.confidence}")


@dataclass
class UnCLIPConfig:
    clip: CLIPConfig
    prior: PriorConfig
    decoder: UNetConfig
    sr256: UNetConfig
    sr1024: UNetConfig | None
    sampling: Sampling = field(default_factory=Sampling)  # the checkpoint's defaults
    prior_diffusion: DiffusionConfig = field(default_factory=lambda: DiffusionConfig(predict="x0"))
    decoder_diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    sr256_diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    sr1024_diffusion: DiffusionConfig | None = field(default_factory=DiffusionConfig)
    # An optional second 64→256 upsampler that runs the last (least noisy) sr256 step instead of sr256, on
    # sr256_diffusion (Karlo's super_res_last).
    sr256_last: UNetConfig | None = None
    # An optional prompt reader that rewrites prompts into the captions the checkpoint draws best.
    reader: ReaderConfig | None = None

    def __post_init__(self) -> None:
        clip, prior = self.clip, self.prior
        if (prior.embed_dim, prior.text_width, prior.context_length) != (
            clip.embed_dim,
            clip.text_width,
            clip.context_length,
        ):
            raise ValueError("prior embed_dim/text_width/context_length must match the CLIP config")
        if (self.decoder.clip_embed_dim, self.decoder.text_width) != (clip.embed_dim, clip.text_width):
            raise ValueError("decoder clip_embed_dim/text_width must match the CLIP config")
        if (self.sr1024 is None) != (self.sr1024_diffusion is None):
            raise ValueError("sr1024 and sr1024_diffusion must both be set or both be None")
        if self.reader is not None and self.reader.context_length != clip.context_length:
            raise ValueError("the reader's context_length must match the CLIP config's")
        last = self.sr256_last
        if last is not None and (last.kind != "sr" or last.image_size != self.sr256.image_size):
            raise ValueError("sr256_last must be an upsampler of sr256's image_size")
        for name, diffusion in (
            ("decoder", self.decoder_diffusion),
            ("sr256", self.sr256_diffusion),
            ("sr1024", self.sr1024_diffusion),
            ("sr256_last", self.sr256_diffusion),
        ):
            unet = getattr(self, name)
            if unet is not None and unet.out_channels != (6 if diffusion.learned_variance else 3):
                raise ValueError(f"{name}: out_channels {unet.out_channels} does not match learned_variance")

    def to_dict(self) -> dict[str, Any]:
        return {f.name: None if (v := getattr(self, f.name)) is None else v.to_dict() for f in _FIELDS}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> UnCLIPConfig:
        unknown = sorted(set(data) - {f.name for f in _FIELDS})
        if unknown:
            raise ValueError(f"UnCLIPConfig: unknown field(s) {unknown}")
        values = {}
        for f in _FIELDS:
            if f.name in data:
                values[f.name] = (
                    None if data[f.name] is None else _FIELD_TYPES[f.name].from_dict(data[f.name])
                )
        return cls(**values)


_FIELDS = dataclasses.fields(UnCLIPConfig)
_FIELD_TYPES: dict[str, type[_JSONConfig] | type[Sampling]] = {
    "clip": CLIPConfig,
    "prior": PriorConfig,
    "decoder": UNetConfig,
    "sr256": UNetConfig,
    "sr1024": UNetConfig,
    "sampling": Sampling,
    "prior_diffusion": DiffusionConfig,
    "decoder_diffusion": DiffusionConfig,
    "sr256_diffusion": DiffusionConfig,
    "sr1024_diffusion": DiffusionConfig,
    "sr256_last": UNetConfig,
    "reader": ReaderConfig,
}


def _tiny() -> UnCLIPConfig:
    """Every test runs on it in seconds on a CPU; the image sizes 64/256/1024 stay real."""
    clip = CLIPConfig(
        embed_dim=32,
        image_size=32,
        patch_size=8,
        vision_width=32,
        vision_layers=2,
        vision_heads=2,
        vocab_size=1024,  # room for build_tokenizer's byte tokens, merges and the two specials
        text_width=32,
        text_layers=2,
        text_heads=2,
    )
    return UnCLIPConfig(
        clip=clip,
        prior=PriorConfig(embed_dim=32, text_width=32, width=64, layers=2, heads=2),
        decoder=UNetConfig(
            kind="decoder",
            image_size=64,
            in_channels=7,
            out_channels=6,
            model_channels=16,
            channel_mult=(1, 2, 2, 2),
            num_res_blocks=1,
            attention_resolutions=(16, 8),
            num_head_channels=16,
            norm_groups=8,
            clip_embed_dim=32,
            text_width=32,
            context_width=32,
        ),
        sr256=UNetConfig(
            kind="sr",
            image_size=256,
            in_channels=6,
            model_channels=16,
            channel_mult=(1, 1, 2, 2),
            num_res_blocks=1,
            attention_resolutions=(32,),
            num_head_channels=16,
            norm_groups=8,
        ),
        sr1024=UNetConfig(
            kind="sr",
            image_size=1024,
            in_channels=6,
            model_channels=8,
            channel_mult=(1, 1, 2, 2),
            num_res_blocks=1,
            attention_resolutions=(),
            norm_groups=8,
        ),
        decoder_diffusion=DiffusionConfig(learned_variance=True),
        prior_diffusion=DiffusionConfig(predict="x0"),
    )


def _small() -> UnCLIPConfig:
    """The shipped shapes-world model, sized to train on a 2-core CPU in about an hour and a half.

    The world is flat colours and three shapes, so CLIP sees 32 px pictures, captions fit 32 tokens, and
    every UNet runs its body on 2×2 (4×4 for 1024 px) pixel patches.
    """
    clip = CLIPConfig(
        embed_dim=64,
        image_size=32,
        patch_size=4,
        vision_width=96,
        vision_layers=3,
        vision_heads=3,
        vocab_size=1024,
        context_length=32,
        text_width=96,
        text_layers=3,
        text_heads=3,
    )
    return UnCLIPConfig(
        clip=clip,
        prior=PriorConfig(embed_dim=64, text_width=96, context_length=32, width=128, layers=4, heads=4),
        decoder=UNetConfig(  # body 32/16/8 px at 32/64/96 channels, attending to the text at 16 and 8
            kind="decoder",
            image_size=64,
            patch_size=2,
            position_embedding=True,
            in_channels=7,
            out_channels=6,
            model_channels=32,
            channel_mult=(1, 2, 3),
            num_res_blocks=1,
            attention_resolutions=(16, 8),
            num_head_channels=32,
            norm_groups=16,
            clip_embed_dim=64,
            text_width=96,
            context_width=64,
        ),
        sr256=UNetConfig(
            kind="sr",
            image_size=256,
            patch_size=2,
            in_channels=6,
            model_channels=32,
            channel_mult=(1, 2, 2),
            num_res_blocks=1,
            attention_resolutions=(),
            norm_groups=16,
        ),
        sr1024=UNetConfig(
            kind="sr",
            image_size=1024,
            patch_size=4,
            in_channels=6,
            model_channels=32,
            channel_mult=(1, 2, 2),
            num_res_blocks=1,
            attention_resolutions=(),
            norm_groups=16,
        ),
        # Every image stage predicts x0, not eps: eps leaves the colours to the noisiest steps, where its
        # errors are magnified by 1/√ᾱ (wrong backgrounds, tinted upsamples), and a 4×4 patch's 48 noise
        # values cannot pass through 32 channels; a flat-colour picture can, and the last step's
        # prediction is the picture itself.
        prior_diffusion=DiffusionConfig(predict="x0"),
        decoder_diffusion=DiffusionConfig(predict="x0", learned_variance=True),
        sr256_diffusion=DiffusionConfig(predict="x0"),
        sr1024_diffusion=DiffusionConfig(predict="x0"),
    )


NAMED_CONFIGS = {"tiny": _tiny, "small": _small}


def named_config(name: str) -> UnCLIPConfig:
    if name not in NAMED_CONFIGS:
        raise ValueError(f"unknown config {name!r}; choose one of {sorted(NAMED_CONFIGS)}")
    return NAMED_CONFIGS[name]()
