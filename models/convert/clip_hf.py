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
- Image preprocessing (resize, centre crop, mean and std) is CLIPImageProcessor's, read from the
  `preprocessor_config.json` beside the vision model (or in its parent's `feature_extractor/`) into
  CLIPConfig's image_* fields; without one, OpenAI's mean and std on the whole picture squashed square.
- MLP width, heads, depth and projection size are each tower's own (`intermediate_size` need not be
  4 x `hidden_size`: OpenCLIP ViT-bigG/14 has 1664 and 8192).
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from models.clip import CLIP, CLIP_MEAN, CLIP_STD
from models.config import ACTIVATIONS, CLIPConfig
from models.convert.hf_files import ConversionError, TensorSource, read_config, read_weights
from models.tokenizer import END_OF_TEXT, MERGES_FILE, VOCAB_FILE, Tokenizer

CLIP_CONFIG_FILE = "clip.json"
CLIP_WEIGHTS_FILE = "clip.safetensors"
PREPROCESSOR_FILE = "preprocessor_config.json"

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


def clip_config_from_hf(
    text: dict[str, Any],
    vision: dict[str, Any] | None,
    projection_dim: int,
    where: tuple[str, str] = ("text_config.", "vision_config."),
) -> CLIPConfig:
    """Our CLIPConfig from transformers' text and vision configs (vision None: a text tower only).
    `where` prefixes the field names in errors (e.g. "text_config." or "text_encoder/config.json: ")."""
    text = _checked_tower({**HF_TEXT_DEFAULTS, **text}, where[0])
    config = CLIPConfig(
        embed_dim=projection_dim,
        vocab_size=text["vocab_size"],
        context_length=text["max_position_embeddings"],
        text_width=text["hidden_size"],
        text_layers=text["num_hidden_layers"],
        text_heads=text["num_attention_heads"],
        text_mlp_width=text["intermediate_size"],
        activation=text["hidden_act"],
        layer_norm_eps=text["layer_norm_eps"],
        image_encoder=vision is not None,
    )
    if vision is None:
        return config
    vision = _checked_tower({**HF_VISION_DEFAULTS, **vision}, where[1])
    for key in ("hidden_act", "layer_norm_eps"):  # one value for both towers in our CLIPConfig
        if vision[key] != text[key]:
            raise ConversionError(
                f"{key} {vision[key]!r} ({where[1]}{key}) differs from the text tower's {text[key]!r} "
                f"({where[0]}{key}); both towers must share it"
            )
    for key, supported in (("num_channels", 3),):
        if vision.get(key, supported) != supported:
            raise ConversionError(f"{key} {vision[key]!r} is not supported ({where[1]}{key})")
    if vision["image_size"] % vision["patch_size"]:
        raise ConversionError(
            f"image_size {vision['image_size']} is not a multiple of patch_size {vision['patch_size']} "
            f"({where[1]}image_size)"
        )
    return dataclasses.replace(
        config,
        image_size=vision["image_size"],
        patch_size=vision["patch_size"],
        vision_width=vision["hidden_size"],
        vision_layers=vision["num_hidden_layers"],
        vision_heads=vision["num_attention_heads"],
        vision_mlp_width=vision["intermediate_size"],
    )


def _checked_tower(tower: dict[str, Any], where: str) -> dict[str, Any]:
    """The tower's config, or a ConversionError naming the first field we cannot run."""
    if tower["hidden_act"] not in ACTIVATIONS:
        raise ConversionError(
            f"hidden_act {tower['hidden_act']!r} is not supported ({where}hidden_act); "
            f"supported: {', '.join(ACTIVATIONS)}"
        )
    for key in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads"):
        if not isinstance(tower[key], int) or tower[key] < 1:
            raise ConversionError(f"{key} {tower[key]!r} is not supported ({where}{key})")
    if tower["hidden_size"] % tower["num_attention_heads"]:
        raise ConversionError(
            f"num_attention_heads {tower['num_attention_heads']} does not divide hidden_size "
            f"{tower['hidden_size']} ({where}num_attention_heads)"
        )
    return tower


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
    folder: str | Path, vision_folder: str | Path | None = None, text_only: bool = False
) -> tuple[CLIPConfig, dict[str, torch.Tensor]]:
    """(config, our CLIP state dict in float32) from a CLIPModel folder, or a text-with-projection
    folder plus a vision-with-projection folder, or (`text_only`) a text-with-projection folder alone
    (a checkpoint without an image encoder). The image preprocessing comes from the first
    `preprocessor_config.json` found beside the vision model (see `preprocessing`)."""
    folder = Path(folder)
    document = read_config(folder)
    if "text_config" in document:  # CLIPModel: both towers in one file
        if vision_folder is not None:
            raise ConversionError(f"{folder} is a full CLIPModel; it needs no separate vision folder")
        where = (f"{folder / 'config.json'}: text_config.", f"{folder / 'config.json'}: vision_config.")
        config = clip_config_from_hf(
            document["text_config"], document["vision_config"], document.get("projection_dim", 512), where
        )
        text = vision = TensorSource(read_weights(folder), str(folder))
        logit_scale = text("logit_scale").reshape(())
        preprocessor_places = [folder]
    else:
        if vision_folder is None and not text_only:
            raise ConversionError(
                f"{folder} holds only a CLIP text model; give the matching CLIPVisionModelWithProjection "
                "folder too (our CLIP checkpoint has both towers)"
            )
        projection_dim = document.get("projection_dim", HF_TEXT_DEFAULTS["projection_dim"])
        vision_document = None if vision_folder is None else read_config(vision_folder)
        if vision_document is not None:
            vision_projection = vision_document.get("projection_dim", HF_VISION_DEFAULTS["projection_dim"])
            if vision_projection != projection_dim:
                raise ConversionError(
                    f"projection_dim {vision_projection} ({Path(vision_folder) / 'config.json'}) differs "
                    f"from the text model's {projection_dim} ({folder / 'config.json'})"
                )
        where = (f"{folder / 'config.json'}: ", f"{Path(vision_folder or '.') / 'config.json'}: ")
        config = clip_config_from_hf(document, vision_document, projection_dim, where)
        text = TensorSource(read_weights(folder), str(folder))
        vision = (
            None if vision_folder is None else TensorSource(read_weights(vision_folder), str(vision_folder))
        )
        logit_scale = torch.tensor(math.log(1 / 0.07))  # unused by inference; CLIPModel's initial value
        preprocessor_places = [] if vision_folder is None else [Path(vision_folder)]
    tensors = {**text_tensors(text, config), "logit_scale": logit_scale}
    if vision is not None:
        tensors.update(vision_tensors(vision, config))
    for source in (text, vision):
        if source is not None:
            source.check_all_used(IGNORED)
    check_state_dict(config, tensors)
    for place in preprocessor_places:
        for path in (place / PREPROCESSOR_FILE, place.parent / "feature_extractor" / PREPROCESSOR_FILE):
            if path.is_file():
                return dataclasses.replace(config, **preprocessing(path, config.image_size)), tensors
    return config, tensors


def preprocessing(path: Path, image_size: int) -> dict[str, Any]:
    """CLIPConfig's image_* fields from a CLIPImageProcessor `preprocessor_config.json`: shorter side
    resized to `size` (`shortest_edge`), centre crop to `crop_size`, `resample`, mean and std."""
    document = json.loads(path.read_text(encoding="utf-8"))

    def refuse(key: str, why: str) -> ConversionError:
        return ConversionError(f"{key} {document.get(key)!r} is not supported ({path}: {key}): {why}")

    crop = document.get("crop_size", image_size)
    crop = (crop, crop) if isinstance(crop, int) else (crop.get("height"), crop.get("width"))
    if not document.get("do_center_crop", True):
        raise refuse("do_center_crop", "CLIP takes a square picture; turn the centre crop on")
    if crop != (image_size, image_size):
        raise refuse("crop_size", f"the vision model takes {image_size} x {image_size} pixels")
    if not document.get("do_resize", True):
        raise refuse("do_resize", "pictures of any size need resizing")
    size = document.get("size", {"shortest_edge": image_size})
    if isinstance(size, int):  # older feature extractors: the shorter side
        size = {"shortest_edge": size}
    if set(size) == {"shortest_edge"}:
        resize = size["shortest_edge"]
        if resize < image_size:
            raise refuse("size", f"the shorter side must reach the crop size {image_size}")
    elif size.get("height") == size.get("width") == image_size:
        resize = None  # squashed to the crop size: the crop keeps everything
    else:
        raise refuse("size", "use shortest_edge, or height = width = the crop size")
    if document.get("do_rescale", True) and abs(document.get("rescale_factor", 1 / 255) - 1 / 255) > 1e-9:
        raise refuse("rescale_factor", "pixels are read as 0..255")
    if not document.get("do_rescale", True):
        raise refuse("do_rescale", "pixels are read as 0..255 and scaled to [0, 1]")
    try:
        resample = Image.Resampling(document.get("resample", Image.Resampling.BICUBIC)).name.lower()
    except ValueError:
        raise refuse("resample", "not a PIL resampling filter") from None
    normalize = document.get("do_normalize", True)
    fields = {
        "image_resize": resize,
        "image_resample": resample,
        "image_mean": tuple(document.get("image_mean", CLIP_MEAN)) if normalize else (0.0, 0.0, 0.0),
        "image_std": tuple(document.get("image_std", CLIP_STD)) if normalize else (1.0, 1.0, 1.0),
    }
    if len(fields["image_mean"]) != 3 or len(fields["image_std"]) != 3:
        raise refuse("image_mean", "three channel values are needed (image_mean and image_std)")
    return fields


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
