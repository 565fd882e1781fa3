"""What a checkpoint folder can do, read from its `unclip.json` alone: no torch, no weights loaded.

The gateway (to refuse an op no worker can run, and for `GET /v1/models`) and the CLI (to refuse before
loading anything) ask here. `save_checkpoint` writes the summary fields; a checkpoint written before they
existed has every part and its parameter counts are read from the safetensors headers.

```
unclip.json   "parts": ["clip_text", "clip_image", "prior", "decoder", "sr256", "sr256_last", "sr1024"]
              "parameters": {"clip": 427616513, "prior": ..., ...}     per component file
              "imported_from": "karlo"                                  absent for our own checkpoints
```
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from models.contract import INVERTING_OPS, OPS

CONFIG_FILE = "unclip.json"
SHIPPED_FOLDER = Path(__file__).parent / "weights" / "default"
OPERATIONS = OPS
# The operations that encode an input image with CLIP's vision tower (inpaint keeps its image's pixels).
IMAGE_OPERATIONS = INVERTING_OPS
UPSAMPLERS = ("sr256", "sr256_last", "sr1024")
NO_IMAGE_ENCODER = (
    "this checkpoint has no CLIP image encoder, so variation, interpolate and text_diff cannot run; import "
    "one with `unclip import karlo SRC OUT --image-encoder DIR` (DIR: the kakaobrain/karlo-v1-alpha-image-"
    "variations folder, or a CLIPVisionModelWithProjection folder of the same CLIP)"
)


class UnsupportedOperation(ValueError):
    """An operation the checkpoint cannot run; the message says what to import."""


@dataclass(frozen=True)
class Capabilities:
    folder: Path
    parts: tuple[str, ...]  # clip_text, clip_image, prior, decoder, sr256, [sr256_last], [sr1024]
    operations: tuple[str, ...]
    largest_size: int  # pixels of the last stage's output
    shipped: bool  # the trained model in models/weights/default
    imported_from: str | None  # "karlo" for a Karlo import; None for our own checkpoints
    parameters: dict[str, int] = field(default_factory=dict)  # per component file: clip, prior, ...

    def refusal(self, operation: str) -> str | None:
        """Why `operation` cannot run on this checkpoint, or None when it can."""
        if operation not in OPERATIONS:
            return f"unknown operation {operation!r}; one of {', '.join(OPERATIONS)}"
        if operation not in self.operations:
            return NO_IMAGE_ENCODER
        return None

    def check(self, operation: str) -> None:
        reason = self.refusal(operation)
        if reason is not None:
            raise UnsupportedOperation(reason)


def read_capabilities(folder: str | Path) -> Capabilities:
    """The capabilities of the checkpoint in `folder` (FileNotFoundError / ValueError when unreadable)."""
    folder = Path(folder)
    document = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
    parts = tuple(document.get("parts") or config_parts(document))
    image = "clip_image" in parts
    return Capabilities(
        folder=folder,
        parts=parts,
        operations=tuple(op for op in OPERATIONS if image or op not in IMAGE_OPERATIONS),
        largest_size=max(document[part]["image_size"] for part in ("decoder", *UPSAMPLERS) if part in parts),
        shipped=_same_folder(folder, SHIPPED_FOLDER),
        imported_from=document.get("imported_from"),
        parameters=document.get("parameters") or header_parameters(folder, parts),
    )


def config_parts(config: dict[str, Any]) -> list[str]:
    """The parts an `UnCLIPConfig.to_dict()` describes (CLIP's image tower unless image_encoder False)."""
    parts = ["clip_text"]
    if config["clip"].get("image_encoder", True):
        parts.append("clip_image")
    upsamplers = [name for name in UPSAMPLERS if config.get(name)]
    return [*parts, "prior", "decoder", *upsamplers, *(["reader"] if config.get("reader") else [])]


def header_parameters(folder: Path, parts: tuple[str, ...]) -> dict[str, int]:
    """Parameter counts per component file, from the safetensors headers (8-byte length, JSON)."""
    counts = {}
    for name in ("clip", *(part for part in parts if not part.startswith("clip_"))):
        path = folder / f"{name}.safetensors"
        if not path.is_file():
            continue
        with path.open("rb") as stored:
            (length,) = struct.unpack("<Q", stored.read(8))
            header = json.loads(stored.read(length))
        counts[name] = sum(_product(entry["shape"]) for key, entry in header.items() if key != "__metadata__")
    return counts


def _product(shape: list[int]) -> int:
    count = 1
    for size in shape:
        count *= size
    return count


def _same_folder(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return False
