"""Hugging Face CLIP folders → our `models.clip.CLIP` state dict and `CLIPConfig`.

Accepted layouts (each a `save_pretrained` folder with `config.json` and safetensors weights only, see
`hf_files`): one `CLIPModel` folder (both towers), or a `CLIPTextModelWithProjection` folder plus a
`CLIPVisionModelWithProjection` folder (Karlo's `text_encoder/` and `image_encoder/`).

The networks are the same computation under other names (HF `text_model.encoder.layers.N.self_attn.
q_proj` ↔ our `transformer.resblocks.N.attn.in_proj_weight[:W]`, ...). Differences we account for:
- HF projections are `nn.Linear` without bias, weight `[E, W]`; ours are matrices `[W, E]` used as
  `x @ proj`, so they are transposed.
- Pooling: HF takes the end-of-text token by argmax of the ids (legacy `eos_token_id` 2) or by the first
  position of `eos_token_id`; ours by argmax. They agree when the end-of-text token holds the largest id,
  which the importer checks against the vocabulary.
- Our `encode_image` takes `[-1, 1]` images and normalises them with `models.clip.CLIP_MEAN/STD`; the
  importer refuses a folder whose `preprocessor_config.json` uses other statistics or another size.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from models.clip import CLIP, CLIP_MEAN, CLIP_STD
from models.config import ACTIVATIONS, CLIPConfig
from models.convert.hf_files import ConversionError, TensorSource, read_config, read_weights
from models.tokenizer import END_OF_TEXT, MERGES_FILE, VOCAB_FILE, Tokenizer

CLIP_CONFIG_FILE = "clip.json"
CLIP_WEIGHTS_FILE = "clip.safetensors"

# transformers' CLIPTextConfig / CLIPVisionConfig defaults, for config.json files that omit a field.
HF_TEXT_DEFAULTS = {
    "vocab_size": 49408,
    "hidden_size": 512,
    "intermediate_size": 2048,
    "projection_dim": 512,
    "num_hidden_layers": 12,
    "num_attention_heads": 8,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
}
HF_VISION_DEFAULTS = {
    "hidden_size": 768,
    "intermediate_size": 3072,
    "projection_dim": 512,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "image_size": 224,
    "patch_size": 32,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
}
IGNORED = ("position_ids",)  # buffers some transformers versions saved


def clip_config_from_hf(text: dict[str, Any], vision: dict[str, Any], projection_dim: int) -> CLIPConfig:
    text, vision = {**HF_TEXT_DEFAULTS, **text}, {**HF_VISION_DEFAULTS, **vision}
    for name, tower in (("text", text), ("vision", vision)):
        if tower["intermediate_size"] != 4 * tower["hidden_size"]:
            raise ConversionError(f"{name} MLP width {tower['intermediate_size']} is not 4 x hidden_size")
        if tower["hidden_act"] not in ACTIVATIONS:
            raise ConversionError(f"{name} activation {tower['hidden_act']!r} is not one of {ACTIVATIONS}")
    if text["hidden_act"] != vision["hidden_act"] or text["layer_norm_eps"] != vision["layer_norm_eps"]:
        raise ConversionError("the text and vision towers use different activations or layer-norm eps")
    return CLIPConfig(
        embed_dim=projection_dim,
        image_size=vision["image_size"],
        patch_size=vision["patch_size"],
        vision_width=vision["hidden_size"],
        vision_layers=vision["num_hidden_layers"],
        vision_heads=vision["num_attention_heads"],
        vocab_size=text["vocab_size"],
        context_length=text["max_position_embeddings"],
        text_width=text["hidden_size"],
        text_layers=text["num_hidden_layers"],
        text_heads=text["num_attention_heads"],
        activation=text["hidden_act"],
        layer_norm_eps=text["layer_norm_eps"],
    )


def _encoder_layers(
    take: TensorSource, hf_prefix: str, our_prefix: str, layers: int
) -> dict[str, torch.Tensor]:
    """HF `encoder.layers.N` (separate q/k/v Linear) → our `transformer.resblocks.N` (packed in_proj)."""
    out = {}
    for n in range(layers):
        hf, ours = f"{hf_prefix}encoder.layers.{n}.", f"{our_prefix}transformer.resblocks.{n}."
        attention = hf + "self_attn."
        for kind in ("weight", "bias"):
            out[f"{ours}attn.in_proj_{kind}"] = torch.cat(
                [take(f"{attention}{p}_proj.{kind}") for p in ("q", "k", "v")]
            )
            out[f"{ours}attn.out_proj.{kind}"] = take(f"{attention}out_proj.{kind}")
            out[f"{ours}ln_1.{kind}"] = take(f"{hf}layer_norm1.{kind}")
            out[f"{ours}ln_2.{kind}"] = take(f"{hf}layer_norm2.{kind}")
            out[f"{ours}mlp.c_fc.{kind}"] = take(f"{hf}mlp.fc1.{kind}")
            out[f"{ours}mlp.c_proj.{kind}"] = take(f"{hf}mlp.fc2.{kind}")
    return out


def text_tensors(take: TensorSource, config: CLIPConfig) -> dict[str, torch.Tensor]:
    p = "text_model."
    out = {
        "token_embedding.weight": take(f"{p}embeddings.token_embedding.weight"),
        "positional_embedding": take(f"{p}embeddings.position_embedding.weight"),
        "ln_final.weight": take(f"{p}final_layer_norm.weight"),
        "ln_final.bias": take(f"{p}final_layer_norm.bias"),
        "text_projection": take("text_projection.weight").t(),  # [E, W] → [W, E]
    }
    out.update(_encoder_layers(take, p, "", config.text_layers))
    return out


def vision_tensors(take: TensorSource, config: CLIPConfig) -> dict[str, torch.Tensor]:
    p = "vision_model."
    out = {
        "visual.conv1.weight": take(f"{p}embeddings.patch_embedding.weight"),
        "visual.class_embedding": take(f"{p}embeddings.class_embedding"),
        "visual.positional_embedding": take(f"{p}embeddings.position_embedding.weight"),
        "visual.proj": take("visual_projection.weight").t(),  # [E, W] → [W, E]
    }
    for ours, hf in (("ln_pre", "pre_layrnorm"), ("ln_post", "post_layernorm")):  # sic: HF's "layrnorm"
        for kind in ("weight", "bias"):
            out[f"visual.{ours}.{kind}"] = take(f"{p}{hf}.{kind}")
    out.update(_encoder_layers(take, p, "visual.", config.vision_layers))
    return out


def check_state_dict(config: CLIPConfig, tensors: dict[str, torch.Tensor]) -> None:
    """Every tensor our CLIP of `config` has, with its shape, and nothing else."""
    with torch.device("meta"):
        expected = CLIP(config).state_dict()
    if set(expected) != set(tensors):
        missing, extra = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
        raise ConversionError(f"converted CLIP tensors differ: missing {missing[:3]}, extra {extra[:3]}")
    for key, want in expected.items():
        if tensors[key].shape != want.shape:
            raise ConversionError(f"{key}: converted shape {list(tensors[key].shape)} != {list(want.shape)}")


def load_hf_clip(
    folder: str | Path, vision_folder: str | Path | None = None
) -> tuple[CLIPConfig, dict[str, torch.Tensor]]:
    """(config, our CLIP state dict in float32) from a CLIPModel folder, or a text-with-projection
    folder plus a vision-with-projection folder."""
    folder = Path(folder)
    document = read_config(folder)
    if "text_config" in document:  # CLIPModel: both towers in one file
        if vision_folder is not None:
            raise ConversionError(f"{folder} is a full CLIPModel; it needs no separate vision folder")
        projection_dim = document.get("projection_dim", 512)
        config = clip_config_from_hf(document["text_config"], document["vision_config"], projection_dim)
        text = vision = TensorSource(read_weights(folder), str(folder))
        logit_scale = text("logit_scale").reshape(())
    else:
        if vision_folder is None:
            raise ConversionError(
                f"{folder} holds only a CLIP text model; give the matching CLIPVisionModelWithProjection "
                "folder too (our CLIP checkpoint has both towers)"
            )
        vision_document = read_config(vision_folder)
        projection_dim = document.get("projection_dim", 512)
        if vision_document.get("projection_dim", 512) != projection_dim:
            raise ConversionError("the text and vision models project to different sizes")
        config = clip_config_from_hf(document, vision_document, projection_dim)
        text = TensorSource(read_weights(folder), str(folder))
        vision = TensorSource(read_weights(vision_folder), str(vision_folder))
        logit_scale = torch.tensor(math.log(1 / 0.07))  # unused by inference; CLIPModel's initial value
    tensors = {**text_tensors(text, config), **vision_tensors(vision, config), "logit_scale": logit_scale}
    text.check_all_used(IGNORED)
    vision.check_all_used(IGNORED)
    check_state_dict(config, tensors)
    if vision_folder is not None:
        check_preprocessing(Path(vision_folder), config)
    check_preprocessing(folder, config)
    return config, tensors


def check_preprocessing(folder: Path, config: CLIPConfig) -> None:
    """A `preprocessor_config.json` (where the folder or its parent's feature_extractor/ has one) must
    normalise like our `encode_image`: CLIP's mean/std at the model's image size."""
    for path in (
        folder / "preprocessor_config.json",
        folder.parent / "feature_extractor" / "preprocessor_config.json",
    ):
        if not path.is_file():
            continue
        document = json.loads(path.read_text(encoding="utf-8"))
        for key, ours in (("image_mean", CLIP_MEAN), ("image_std", CLIP_STD)):
            theirs = document.get(key, ours)
            if any(abs(a - b) > 1e-6 for a, b in zip(theirs, ours, strict=True)):
                raise ConversionError(f"{path}: {key} {theirs} differs from CLIP's {list(ours)}")
        crop = document.get("crop_size", config.image_size)
        crop = crop.get("height", config.image_size) if isinstance(crop, dict) else crop
        if crop != config.image_size:
            raise ConversionError(f"{path}: crop size {crop} differs from the model's {config.image_size}")


def find_tokenizer(*folders: Path) -> Path:
    for folder in folders:
        if (folder / VOCAB_FILE).is_file() and (folder / MERGES_FILE).is_file():
            return folder
    raise ConversionError(f"no {VOCAB_FILE} + {MERGES_FILE} in {', '.join(map(str, folders))}")


def check_tokenizer(folder: Path, config: CLIPConfig) -> Tokenizer:
    """Our tokenizer reads it, and its end-of-text token holds the largest id (our pooling's argmax)."""
    tokenizer = Tokenizer.from_folder(folder, context_length=config.context_length)
    if tokenizer.vocab_size > config.vocab_size:
        raise ConversionError(f"{folder}: {tokenizer.vocab_size} token ids, CLIP embeds {config.vocab_size}")
    if tokenizer.eot_id != max(tokenizer.vocab.values()):
        raise ConversionError(f"{folder}: {END_OF_TEXT} is not the largest id; argmax pooling would be wrong")
    return tokenizer


def import_clip(src: str | Path, out: str | Path, vision: str | Path | None = None) -> Path:
    """Write `clip.json`, `clip.safetensors` and the tokenizer files of a HF CLIP into `out`."""
    src, out = Path(src), Path(out)
    config, tensors = load_hf_clip(src, vision)
    tokenizer_folder = find_tokenizer(src, src / "tokenizer", src.parent / "tokenizer")
    check_tokenizer(tokenizer_folder, config)
    out.mkdir(parents=True, exist_ok=True)
    (out / CLIP_CONFIG_FILE).write_text(json.dumps(config.to_dict(), indent=2) + "\n", encoding="utf-8")
    save_file(
        {k: v.contiguous() for k, v in tensors.items()}, out / CLIP_WEIGHTS_FILE, metadata={"format": "pt"}
    )
    for name in (VOCAB_FILE, MERGES_FILE):
        shutil.copyfile(tokenizer_folder / name, out / name)
    return out


def load_imported_clip(folder: str | Path) -> tuple[CLIP, Tokenizer]:
    """An `import_clip` folder back as a CLIP (float32, eval mode) and its tokenizer."""
    folder = Path(folder)
    config = CLIPConfig.from_dict(json.loads((folder / CLIP_CONFIG_FILE).read_text(encoding="utf-8")))
    model = CLIP(config)
    model.load_state_dict(load_file(folder / CLIP_WEIGHTS_FILE), strict=True)
    return model.eval(), Tokenizer.from_folder(folder, context_length=config.context_length)
