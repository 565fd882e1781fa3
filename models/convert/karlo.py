"""A diffusers UnCLIP folder (Karlo, `kakaobrain/karlo-v1-alpha`) → our checkpoint folder.

```
text_encoder/ tokenizer/                  CLIP ViT-L/14 text tower (clip_hf) → clip.safetensors, vocab/merges
prior/ prior_scheduler/                   PriorTransformer                  → prior.safetensors
text_proj/ decoder/ decoder_scheduler/    UnCLIPTextProjModel + UNet2DConditionModel → decoder.safetensors
super_res_first/ super_res_scheduler/     UNet2DModel 64 → 256              → sr256.safetensors
super_res_last/                           UNet2DModel for the last SR step  → sr256_last.safetensors
```
The text-to-image repository publishes no image encoder: without one the checkpoint has CLIP's text tower
only (`CLIPConfig.image_encoder` False; generate and inpaint run, the operations that encode an image are
refused, see models.capabilities). `image_encoder` adds the vision tower: the image-variations repository
(`kakaobrain/karlo-v1-alpha-image-variations`: its `image_encoder/` and `feature_extractor/`), or a
`CLIPVisionModelWithProjection` folder of the same CLIP (openai/clip-vit-large-patch14) itself.

Karlo conditions differently from the paper, so the imported config turns on the options that reproduce it
(see PriorConfig / UNetConfig):
- Its prior and decoder take the raw (unnormalised) CLIP text embedding. That is CLIP's text projection
  of the end-of-text state, so the projection is folded into our `text_embed_proj` / `text_time_proj`
  (computed in float64) and they read the end-of-text state; CLIP image embeddings stay raw too
  (`normalize_image_embeds` False), and the prior's diffusion space is `(z - clip_mean) / clip_std`.
- Its guidance null is the empty prompt (prior and decoder) plus a learned image embedding (decoder).
  The importer runs the imported CLIP on "" and stores those states (projected, for the prior) as our
  learned null text, attended only over its first tokens (SOT, EOT), so a dropped row computes exactly
  what Karlo's unconditional row computes.
- `clip_extra_context_tokens_proj` lays its output out as `[context_width, 4]`; ours is `[4, context_width]`,
  so its rows are permuted.
- Karlo switches to `super_res_last` for the final upsampling step: `super_res_first` is our sr256 and
  `super_res_last` our optional sr256_last, which the pipeline runs for the last sr256 step.

Derived tensors (the folded projections, the empty prompt's states and their projections) are computed
and stored in float64: a float32 load rounds them once, and a float64 load computes what diffusers computes
in float64 (the whole-generation comparison in tests/models/convert/test_karlo_generation.py).

Its sampler's choices are recorded too: one prior sample per item (no best-of-2), the prior's x0 clamped to
the scheduler's clip_sample_range, the learned variance interpolant used unclamped, and Karlo's defaults
(`KARLO_SAMPLING`). Timestep spacing and schedules are the same as ours (models.diffusion).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch

from models.checkpoint import UnCLIPModels, build_models, load_checkpoint, save_checkpoint
from models.clip import CLIP
from models.config import CLIPConfig, DiffusionConfig, PriorConfig, UnCLIPConfig, UNetConfig
from models.contract import Sampling
from models.convert.clip_hf import check_tokenizer, find_tokenizer, load_hf_clip
from models.convert.diffusers_unet import unet_config, unet_tensors
from models.convert.hf_files import ConversionError, TensorSource, read_config, read_weights
from models.tokenizer import Tokenizer

SR_LAST_FILE = "sr256_last.safetensors"  # written by save_checkpoint for the sr256_last component
IMAGE_ENCODER = "image_encoder"
VISION_CLASS = "CLIPVisionModelWithProjection"
TEXT_TO_IMAGE_PARTS = (
    "prior", "prior_scheduler", "text_encoder", "tokenizer", "text_proj", "decoder", "decoder_scheduler",
    "super_res_first", "super_res_last", "super_res_scheduler",
)  # fmt: skip
# Karlo's published defaults (UnCLIPPipeline): 25 prior steps at guidance 4, 25 decoder steps at 8, 7 SR.
KARLO_SAMPLING = Sampling(
    size=256, prior_steps=25, prior_guidance=4.0, decoder_steps=25, decoder_guidance=8.0
)
PRIOR_REQUIRED = {
    "time_embed_act_fn": "silu",
    "norm_in_type": None,
    "embedding_proj_norm_type": None,
    "encoder_hid_proj_type": "linear",
    "added_emb_type": "prd",
    "additional_embeddings": 4,
}


def _weights(folder: Path) -> TensorSource:
    return TensorSource(read_weights(folder), str(folder))


def _fold(outer: torch.Tensor, inner: torch.Tensor) -> torch.Tensor:
    """The weight of Linear(outer) ∘ Linear(inner, no bias), in float64 (see DERIVED)."""
    return outer.double() @ inner.double()


def diffusion_config(folder: Path) -> DiffusionConfig:
    """Our DiffusionConfig from an UnCLIPScheduler's scheduler_config.json."""
    document = json.loads((folder / "scheduler_config.json").read_text(encoding="utf-8"))
    if document.get("beta_schedule", "squaredcos_cap_v2") != "squaredcos_cap_v2":
        raise ConversionError(f"{folder}: beta_schedule {document['beta_schedule']!r} is not supported")
    prediction = {"epsilon": "eps", "sample": "x0"}.get(document.get("prediction_type", "epsilon"))
    variance = {"learned_range": True, "fixed_small_log": False}.get(
        document.get("variance_type", "fixed_small_log")
    )
    if prediction is None or variance is None:
        raise ConversionError(f"{folder}: prediction/variance type not supported: {document}")
    return DiffusionConfig(
        schedule="cosine",  # squaredcos_cap_v2: Nichol & Dhariwal's cosine with betas capped at 0.999
        timesteps=document.get("num_train_timesteps", 1000),
        predict=prediction,
        learned_variance=variance,
        x0_clip_range=document.get("clip_sample_range", 1.0) if document.get("clip_sample", True) else None,
        clamp_learned_variance=False,  # UnCLIPScheduler interpolates with v as the model outputs it
    )


def empty_prompt(clip: CLIP, tokenizer: Tokenizer) -> tuple[torch.Tensor, int]:
    """CLIP's token states `[L, W]` float64 for "" and how many of them are real (SOT, EOT)."""
    ids, _ = tokenizer.encode([""])
    with torch.no_grad():
        encoding = clip.double().encode_text(ids)
    clip.float()  # float32 → float64 → float32 is exact
    return encoding.states[0].double(), int(encoding.mask[0].sum())


def prior_part(
    folder: Path, clip: CLIPConfig, text_projection: torch.Tensor, null_states: torch.Tensor, null_tokens: int
) -> tuple[PriorConfig, dict[str, torch.Tensor]]:
    document = read_config(folder)
    for key, value in PRIOR_REQUIRED.items():
        if document.get(key, value) != value:
            raise ConversionError(f"{folder}: {key}={document[key]!r} is not supported (expected {value!r})")
    embedding_dim = document.get("embedding_dim", 768)
    heads, head_dim = document.get("num_attention_heads", 32), document.get("attention_head_dim", 64)
    sizes = {
        "time_embed_dim": heads * head_dim,
        "embedding_proj_dim": embedding_dim,
        "clip_embed_dim": embedding_dim,
    }
    for key, size in sizes.items():
        if document.get(key) not in (None, size):
            raise ConversionError(f"{folder}: {key}={document[key]} is not supported (expected {size})")
    if (embedding_dim, embedding_dim) != (clip.embed_dim, clip.text_width):
        raise ConversionError(f"{folder}: embedding_dim {embedding_dim} != the CLIP's embed and text width")
    config = PriorConfig(
        embed_dim=clip.embed_dim,
        text_width=clip.text_width,
        context_length=document.get("num_embeddings", 77),
        width=heads * head_dim,
        layers=document.get("num_layers", 20),
        heads=heads,
        text_embed_from="eot_state",
        latent_stats=True,
        null_text_tokens=null_tokens,
        sample_candidates=1,  # Karlo keeps its one sample
    )
    if config.context_length != clip.context_length:
        raise ConversionError(f"{folder}: num_embeddings {config.context_length} != CLIP's context length")
    take = _weights(folder)
    out: dict[str, torch.Tensor] = {}

    def copy(ours: str, theirs: str) -> None:
        for kind in ("weight", "bias"):
            out[f"{ours}.{kind}"] = take(f"{theirs}.{kind}")

    copy("text_states_proj", "encoder_hidden_states_proj")
    copy("time_embed.0", "time_embedding.linear_1")
    copy("time_embed.2", "time_embedding.linear_2")
    copy("image_embed_proj", "proj_in")
    copy("ln_final", "norm_out")
    copy("out_proj", "proj_to_clip_embeddings")
    out["text_embed_proj.weight"] = _fold(take("embedding_proj.weight"), text_projection)
    out["text_embed_proj.bias"] = take("embedding_proj.bias")
    out["query"] = take("prd_embedding").reshape(-1)
    out["positional_embedding"] = take("positional_embedding")[0]
    out["clip_mean"] = take("clip_mean").reshape(-1)
    out["clip_std"] = take("clip_std").reshape(-1)
    for n in range(config.layers):
        ours, theirs = f"transformer.resblocks.{n}", f"transformer_blocks.{n}"
        for kind in ("weight", "bias"):
            qkv = [take(f"{theirs}.attn1.to_{p}.{kind}") for p in ("q", "k", "v")]
            out[f"{ours}.attn.in_proj_{kind}"] = torch.cat(qkv)
        copy(f"{ours}.attn.out_proj", f"{theirs}.attn1.to_out.0")
        copy(f"{ours}.ln_1", f"{theirs}.norm1")
        copy(f"{ours}.ln_2", f"{theirs}.norm3")
        copy(f"{ours}.mlp.c_fc", f"{theirs}.ff.net.0.proj")
        copy(f"{ours}.mlp.c_proj", f"{theirs}.ff.net.2")
    take.check_all_used()
    # Karlo's null text is the empty prompt: stored after the projections the prior applies to text.
    eot = null_tokens - 1
    states_proj = (out["text_states_proj.weight"].double(), out["text_states_proj.bias"].double())
    out["null_text_states"] = null_states @ states_proj[0].t() + states_proj[1]
    out["null_text_embed"] = out["text_embed_proj.weight"] @ null_states[eot] + out["text_embed_proj.bias"]
    return config, out


def decoder_part(
    src: Path, clip: CLIPConfig, text_projection: torch.Tensor, null_states: torch.Tensor, null_tokens: int
) -> tuple[UNetConfig, dict[str, torch.Tensor]]:
    proj_document = read_config(src / "text_proj")
    context_width = proj_document["cross_attention_dim"]
    k = proj_document.get("clip_extra_context_tokens", 4)
    document = read_config(src / "decoder")
    if document.get("cross_attention_dim") != context_width:
        raise ConversionError("text_proj and decoder disagree on cross_attention_dim")
    if proj_document.get("clip_embeddings_dim", 768) != clip.embed_dim or clip.embed_dim != clip.text_width:
        raise ConversionError("text_proj's clip_embeddings_dim must equal the CLIP's embed and text width")
    config = unet_config(
        document,
        "decoder",
        clip_embed_dim=clip.embed_dim,
        text_width=clip.text_width,
        context_width=context_width,
        clip_context_tokens=k,
        text_embed_to_time=True,
        learned_null_image=True,
        null_text_tokens=null_tokens,
    )
    if proj_document["time_embed_dim"] != 4 * config.model_channels:
        raise ConversionError("text_proj's time_embed_dim is not the decoder's timestep embedding width")
    unet = _weights(src / "decoder")
    out = unet_tensors(unet, config)
    unet.check_all_used()
    take = _weights(src / "text_proj")
    for ours, theirs in (
        ("clip_time_proj", "clip_image_embeddings_project_to_time_embeddings"),
        ("text_proj", "encoder_hidden_states_proj"),
        ("text_norm", "text_encoder_hidden_states_norm"),
    ):
        for kind in ("weight", "bias"):
            out[f"{ours}.{kind}"] = take(f"{theirs}.{kind}")
    # Karlo reshapes the projection to [B, context_width, k] and transposes; ours views it as [B, k, width].
    tokens_weight = take("clip_extra_context_tokens_proj.weight")  # [width * k, E], row c * k + t
    tokens_bias = take("clip_extra_context_tokens_proj.bias")
    out["clip_tokens_proj.weight"] = (
        tokens_weight.view(context_width, k, -1).transpose(0, 1).reshape(k * context_width, -1)
    )
    out["clip_tokens_proj.bias"] = tokens_bias.view(context_width, k).t().reshape(-1)
    out["text_time_proj.weight"] = _fold(take("embedding_proj.weight"), text_projection)
    out["text_time_proj.bias"] = take("embedding_proj.bias")
    out["null_image_embed"] = take("learned_classifier_free_guidance_embeddings")
    out["null_text_states"] = null_states[:null_tokens]
    take.check_all_used()
    return config, out


def sr_part(folder: Path) -> tuple[UNetConfig, dict[str, torch.Tensor]]:
    config = unet_config(read_config(folder), "sr", low_res_upsample="bicubic")
    take = _weights(folder)
    out = unet_tensors(take, config)
    take.check_all_used()
    return config, out


def _load(module: torch.nn.Module, tensors: dict[str, torch.Tensor], name: str) -> None:
    """Strict load: every tensor of our network converted, none left over, shapes equal."""
    expected = module.state_dict()
    missing, extra = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    if missing or extra:
        raise ConversionError(f"{name}: converted tensors differ (missing {missing[:3]}, extra {extra[:3]})")
    for key, want in expected.items():
        if tensors[key].shape != want.shape:
            raise ConversionError(
                f"{name}.{key}: converted shape {list(tensors[key].shape)} != {list(want.shape)}"
            )
    module.load_state_dict({k: v.contiguous() for k, v in tensors.items()}, strict=True, assign=True)


def find_image_encoder(folder: str | Path) -> Path:
    """The CLIPVisionModelWithProjection folder in `folder`: its `image_encoder/` (the image-variations
    repository, or a text-to-image folder that has one) or `folder` itself."""
    folder = Path(folder)
    for candidate in (folder / IMAGE_ENCODER, folder):
        config = candidate / "config.json"
        if config.is_file():
            architectures = json.loads(config.read_text(encoding="utf-8")).get("architectures") or [
                VISION_CLASS
            ]
            if VISION_CLASS in architectures:
                return candidate
            raise ConversionError(f"{config} describes {architectures[0]}, not a {VISION_CLASS}")
    raise ConversionError(
        f"{folder} has neither {IMAGE_ENCODER}/config.json nor config.json: give the "
        f"kakaobrain/karlo-v1-alpha-image-variations folder or a {VISION_CLASS} folder"
    )


def _check_layout(src: Path) -> None:
    """A text-to-image UnCLIP folder, or a message saying which folder to give instead."""
    if not src.is_dir():
        raise ConversionError(f"{src} is not a folder")
    if not (src / "prior").is_dir() and (src / IMAGE_ENCODER).is_dir():
        raise ConversionError(
            f"{src} has no prior/: it looks like the image-variations repository; give the text-to-image "
            f"folder (kakaobrain/karlo-v1-alpha) as SRC and this one as --image-encoder"
        )
    missing = [part for part in TEXT_TO_IMAGE_PARTS if not (src / part).is_dir()]
    if missing:
        raise ConversionError(f"{src} lacks {', '.join(p + '/' for p in missing)}: not a Karlo UnCLIP folder")


def convert_karlo(
    src: str | Path, image_encoder: str | Path | None = None, sr1024_from: str | Path | None = None
) -> UnCLIPModels:
    """Our models (CPU) from a Karlo folder: Karlo's float32 tensors, derived ones in float64 (cast the
    models to one dtype to run them; `import_karlo` + `load_checkpoint` does). Karlo stops at 256 px;
    `sr1024_from` (one of our checkpoint folders) lends its 256→1024 upsampler. Without `image_encoder`
    (see `find_image_encoder`) and without SRC/image_encoder/, CLIP has its text tower only."""
    src = Path(src)
    _check_layout(src)
    donor = _sr1024_donor(sr1024_from)
    if image_encoder is not None:
        vision: Path | None = find_image_encoder(image_encoder)
    else:
        vision = src / IMAGE_ENCODER if (src / IMAGE_ENCODER / "config.json").is_file() else None
    clip_config, clip_tensors = load_hf_clip(src / "text_encoder", vision, text_only=True)
    clip_config.normalize_image_embeds = False
    tokenizer = check_tokenizer(find_tokenizer(src / "tokenizer", src / "text_encoder"), clip_config)
    with torch.device("meta"):  # no random init of weights about to be replaced
        clip = CLIP(clip_config)
    _load(clip, clip_tensors, "clip")
    null_states, null_tokens = empty_prompt(clip.eval(), tokenizer)
    text_projection = clip_tensors["text_projection"].t()  # HF layout [E, W]

    prior_config, prior_tensors = prior_part(
        src / "prior", clip_config, text_projection, null_states, null_tokens
    )
    decoder_config, decoder_tensors = decoder_part(
        src, clip_config, text_projection, null_states, null_tokens
    )
    sr_config, sr_tensors = sr_part(src / "super_res_first")
    last_config, last_tensors = sr_part(src / "super_res_last")
    if last_config != sr_config:
        raise ConversionError("super_res_first and super_res_last have different configs")
    config = UnCLIPConfig(
        clip=clip_config,
        prior=prior_config,
        decoder=decoder_config,
        sr256=sr_config,
        sr1024=None if donor is None else donor.config.sr1024,
        sampling=KARLO_SAMPLING if donor is None else dataclasses.replace(KARLO_SAMPLING, size=1024),
        prior_diffusion=diffusion_config(src / "prior_scheduler"),
        decoder_diffusion=diffusion_config(src / "decoder_scheduler"),
        sr256_diffusion=diffusion_config(src / "super_res_scheduler"),
        sr1024_diffusion=None if donor is None else donor.config.sr1024_diffusion,
        sr256_last=last_config,
    )
    with torch.device("meta"):
        models = build_models(config, tokenizer)
    models.clip = clip
    _load(models.prior, prior_tensors, "prior")
    _load(models.decoder, decoder_tensors, "decoder")
    _load(models.sr256, sr_tensors, "sr256")
    _load(models.sr256_last, last_tensors, "sr256_last")  # type: ignore[arg-type]
    if donor is not None:
        models.sr1024 = donor.sr1024
    for module in models.components().values():
        module.eval()
    return models


def _sr1024_donor(folder: str | Path | None) -> UnCLIPModels | None:
    if folder is None:
        return None
    donor = load_checkpoint(folder)
    if donor.sr1024 is None:
        raise ConversionError(f"{folder} has no sr1024 upsampler to lend")
    return donor


def import_karlo(
    src: str | Path,
    out: str | Path,
    image_encoder: str | Path | None = None,
    sr1024_from: str | Path | None = None,
) -> Path:
    """Write our checkpoint folder for a Karlo folder; returns `out`."""
    out = Path(out)
    save_checkpoint(convert_karlo(src, image_encoder, sr1024_from), out, imported_from="karlo")
    return out


def missing_parts(models: UnCLIPModels) -> list[str]:
    """What a checkpoint lacks of the full stack (DESIGN §1), and how the pipeline copes without it."""
    notes = []
    if models.clip.visual is None:
        notes.append(
            "no CLIP image encoder: variation, interpolate and text_diff are refused (--image-encoder DIR "
            "adds one: the kakaobrain/karlo-v1-alpha-image-variations folder)"
        )
    if models.sr1024 is None:
        notes.append("no 256→1024 upsampler: images stop at 256 px (--sr1024-from CHECKPOINT lends one)")
    if not models.decoder.supports_inpainting:
        notes.append(
            "a decoder without inpainting channels: inpaint puts the noised original back outside the mask at"
            " every step"
        )
    return notes
