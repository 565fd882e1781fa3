"""Reading Hugging Face model folders safely: `config.json` and safetensors weights, never pickles.

A folder written by `save_pretrained` holds `model.safetensors` (transformers), or
`diffusion_pytorch_model.safetensors` (diffusers), or shards listed in a `*.safetensors.index.json`.
A folder with only `pytorch_model.bin` / `*.bin` / `*.ckpt` is refused: loading those unpickles, which
can run arbitrary code. Convert such a folder once with its own library (`save_pretrained(...,
safe_serialization=True)`) in a sandbox you trust.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

WEIGHT_NAMES = ("model.safetensors", "diffusion_pytorch_model.safetensors")
PICKLE_SUFFIXES = (".bin", ".ckpt", ".pt", ".pth")


class ConversionError(ValueError):
    """A folder that cannot be imported; the message says which file and what to do."""


def read_config(folder: str | Path) -> dict[str, Any]:
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise ConversionError(f"{path} is missing: not a Hugging Face model folder")
    return json.loads(path.read_text(encoding="utf-8"))


def read_weights(folder: str | Path) -> dict[str, torch.Tensor]:
    """Every tensor of the folder's safetensors file(s), on the CPU, in their stored dtype."""
    folder = Path(folder)
    for name in WEIGHT_NAMES:
        if (folder / name).is_file():
            return load_file(folder / name)
    for index in sorted(folder.glob("*.safetensors.index.json")):
        shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        tensors: dict[str, torch.Tensor] = {}
        for shard in shards:
            tensors.update(load_file(folder / shard))
        return tensors
    pickles = (
        sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES) if folder.is_dir() else []
    )
    if pickles:
        raise ConversionError(
            f"{folder} has only pickled weights ({', '.join(pickles)}); only safetensors are imported "
            "(unpickling can run arbitrary code). Re-save it with save_pretrained(..., "
            "safe_serialization=True) where you trust the file, then import that folder."
        )
    raise ConversionError(f"{folder} has no {' or '.join(WEIGHT_NAMES)}")


class TensorSource:
    """Tensors taken by name; `unused()` lists what no mapping asked for (a layout we do not know)."""

    def __init__(self, tensors: dict[str, torch.Tensor], origin: str) -> None:
        self.tensors = tensors
        self.origin = origin
        self.taken: set[str] = set()

    def __call__(self, name: str) -> torch.Tensor:
        if name not in self.tensors:
            raise ConversionError(f"{self.origin}: tensor {name!r} is missing")
        self.taken.add(name)
        return self.tensors[name].float()

    def __contains__(self, name: str) -> bool:
        return name in self.tensors

    def unused(self, ignore: tuple[str, ...] = ()) -> list[str]:
        return sorted(k for k in self.tensors if k not in self.taken and not k.endswith(ignore))

    def check_all_used(self, ignore: tuple[str, ...] = ()) -> None:
        left = self.unused(ignore)
        if left:
            raise ConversionError(
                f"{self.origin}: {len(left)} tensor(s) have no place in our network, e.g. {left[0]!r}; "
                "this variant of the architecture is not supported"
            )
