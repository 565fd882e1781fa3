"""Checkpoint folders (DESIGN §3): `unclip.json`, one safetensors file per component, tokenizer files.

```
unclip.json          UnCLIPConfig.to_dict() plus {"format": 1} and the summary models.capabilities reads
                     without torch: "parts", "parameters" (per file), "imported_from" (imports only)
clip.safetensors  prior.safetensors  decoder.safetensors  sr256.safetensors  [sr1024.safetensors]
[sr256_last.safetensors]   when the config has sr256_last (Karlo's super_res_last)
[reader.safetensors]       when the config has a prompt reader (models/reader.py)
vocab.json  merges.txt
```
Loading reads tensors with safetensors only (never unpickles) and checks every tensor's name and shape
against the network the config describes before anything is assigned.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from models.capabilities import SHIPPED_FOLDER, config_parts
from models.clip import CLIP
from models.config import UnCLIPConfig, named_config
from models.prior import DiffusionPrior
from models.reader import PromptReader
from models.tokenizer import MERGES_FILE, VOCAB_FILE, Tokenizer, build_tokenizer
from models.unet import DecoderUNet, SuperResUNet

CONFIG_FILE = "unclip.json"
FORMAT_VERSION = 1
COMPONENTS = ("clip", "prior", "decoder", "sr256", "sr1024", "sr256_last", "reader")
DEFAULT_FOLDER = SHIPPED_FOLDER
SUMMARY_FIELDS = ("parts", "parameters", "imported_from")  # derived from the config and weights

# The words of the shapes world (SHAPES.md) and a few common ones: each becomes a single token.
DEFAULT_WORDS = (
    "a an the photo picture of and with on in at to is background shape shapes "
    "circle square triangle circles squares triangles small large big little "
    "center centre middle left right top bottom corner "
    "red green blue yellow purple orange white black"
).split()


class CheckpointError(ValueError):
    """A checkpoint folder that cannot be loaded; the message names the file and tensor."""


@dataclass
class UnCLIPModels:
    config: UnCLIPConfig
    tokenizer: Tokenizer
    clip: CLIP
    prior: DiffusionPrior
    decoder: DecoderUNet
    sr256: SuperResUNet
    sr1024: SuperResUNet | None
    sr256_last: SuperResUNet | None = None  # runs the last sr256 step when the checkpoint has one
    reader: PromptReader | None = None  # rewrites prompts into the checkpoint's own captions

    def components(self) -> dict[str, nn.Module]:
        return {name: module for name in COMPONENTS if (module := getattr(self, name)) is not None}


def build_models(config: UnCLIPConfig, tokenizer: Tokenizer) -> UnCLIPModels:
    """Randomly initialised networks of `config` (on the current default device)."""
    if tokenizer.vocab_size > config.clip.vocab_size:
        raise ValueError(
            f"the tokenizer has {tokenizer.vocab_size} ids but CLIP's vocab_size is {config.clip.vocab_size}"
        )
    return UnCLIPModels(
        config=config,
        tokenizer=tokenizer,
        clip=CLIP(config.clip),
        prior=DiffusionPrior(config.prior),
        decoder=DecoderUNet(config.decoder),
        sr256=SuperResUNet(config.sr256),
        sr1024=None if config.sr1024 is None else SuperResUNet(config.sr1024),
        sr256_last=None if config.sr256_last is None else SuperResUNet(config.sr256_last),
        reader=None if config.reader is None else PromptReader(config.reader),
    )


def save_checkpoint(models: UnCLIPModels, folder: str | Path, imported_from: str | None = None) -> None:
    """Write `models` to `folder`; `imported_from` names the published format of an import ("karlo")."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = models.config.to_dict()
    document = {
        "format": FORMAT_VERSION,
        **config,
        "parts": config_parts(config),
        "parameters": {
            name: sum(tensor.numel() for tensor in module.state_dict().values())
            for name, module in models.components().items()
        },
    }
    if imported_from is not None:
        document["imported_from"] = imported_from
    (folder / CONFIG_FILE).write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    for name, module in models.components().items():
        tensors = {key: value.detach().cpu().contiguous() for key, value in module.state_dict().items()}
        save_file(tensors, folder / f"{name}.safetensors", metadata={"format": "pt"})
    models.tokenizer.save(folder)


def read_config(folder: str | Path) -> UnCLIPConfig:
    path = Path(folder) / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"checkpoint file {path} is missing")
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
        if document.pop("format", None) != FORMAT_VERSION:
            raise ValueError(f"expected format {FORMAT_VERSION}")
        for name in SUMMARY_FIELDS:
            document.pop(name, None)
        return UnCLIPConfig.from_dict(document)
    except (ValueError, TypeError) as error:
        raise CheckpointError(f"{path}: {error}") from error


def load_checkpoint(
    folder: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> UnCLIPModels:
    folder = Path(folder)
    config = read_config(folder)
    for name in (VOCAB_FILE, MERGES_FILE):
        if not (folder / name).is_file():
            raise CheckpointError(f"checkpoint file {folder / name} is missing")
    tokenizer = Tokenizer.from_folder(folder, context_length=config.clip.context_length)
    # Build on the meta device: no memory and no random init for weights about to be replaced.
    with torch.device("meta"):
        models = build_models(config, tokenizer)
    for name, module in models.components().items():
        _load_component(module, folder / f"{name}.safetensors", device)
        module.to(dtype=dtype).eval()
    return models


def _load_component(module: nn.Module, path: Path, device: str | torch.device) -> None:
    if not path.is_file():
        raise CheckpointError(f"checkpoint file {path} is missing")
    expected = module.state_dict()
    tensors = {}
    with safe_open(path, framework="pt", device=str(device)) as stored:
        names = set(stored.keys())
        missing = sorted(set(expected) - names)
        unexpected = sorted(names - set(expected))
        if missing:
            raise CheckpointError(f"{path}: tensor {missing[0]!r} is missing ({len(missing)} missing in all)")
        if unexpected:
            raise CheckpointError(f"{path}: unexpected tensor {unexpected[0]!r} ({len(unexpected)} in all)")
        for key, want in expected.items():
            shape = tuple(stored.get_slice(key).get_shape())
            if shape != tuple(want.shape):
                raise CheckpointError(
                    f"{path}: tensor {key!r} has shape {list(shape)}, the config expects {list(want.shape)}"
                )
            tensors[key] = stored.get_tensor(key)
    module.load_state_dict(tensors, strict=True, assign=True)


def init_checkpoint(
    folder: str | Path,
    config: str | UnCLIPConfig = "tiny",
    seed: int = 0,
    words: tuple[str, ...] = DEFAULT_WORDS,
) -> Path:
    """A checkpoint with random weights (for tests and as the starting point of training)."""
    folder = Path(folder)
    config = named_config(config) if isinstance(config, str) else config
    torch.manual_seed(seed)
    save_checkpoint(build_models(config, build_tokenizer(words, config.clip.context_length)), folder)
    return folder


def default_checkpoint() -> Path:
    """The shipped trained checkpoint if present, else a tiny random one made once per code version."""
    if (DEFAULT_FOLDER / CONFIG_FILE).is_file():
        return DEFAULT_FOLDER
    folder = Path(tempfile.gettempdir()) / f"unclip-serve-tiny-{_tiny_version()}"
    if (folder / CONFIG_FILE).is_file():
        return folder
    # Written beside its final place and renamed, so a concurrent reader never sees half a checkpoint.
    staging = Path(tempfile.mkdtemp(prefix=f"{folder.name}.", dir=folder.parent))
    try:
        init_checkpoint(staging, "tiny")
        os.rename(staging, folder)
    except OSError:
        if not (folder / CONFIG_FILE).is_file():  # not a concurrent process winning the rename
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def _tiny_version() -> str:
    """Package version plus a digest of the tiny config and the network sources: a code change that
    alters the tiny checkpoint's tensors gets a fresh folder instead of a stale one that fails to load."""
    try:
        version = importlib.metadata.version("unclip-serve")
    except importlib.metadata.PackageNotFoundError:
        version = "dev"
    digest = hashlib.sha256(json.dumps(dataclasses.asdict(named_config("tiny")), sort_keys=True).encode())
    digest.update(" ".join(DEFAULT_WORDS).encode())
    for module in ("clip", "prior", "unet", "tokenizer", "checkpoint"):
        digest.update((Path(__file__).parent / f"{module}.py").read_bytes())
    return f"{version}-{digest.hexdigest()[:10]}"
