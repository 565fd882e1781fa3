"""The images inside jobs, one codec for both sides (PIL only, no torch).

Input images travel in a job's params as base64 PNG (the gateway checks what clients send and re-encodes
it, `service.gateway.images`); results are stored as PNG bytes (`result:{id}:{i}`).
"""

from __future__ import annotations

import base64
import binascii
import io

from PIL import Image


def png_bytes(image: Image.Image) -> bytes:
    """A result as stored: PNG bytes."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def png_base64(image: Image.Image) -> str:
    """An input image as it goes into a job's params."""
    return base64.b64encode(png_bytes(image)).decode("ascii")


def image_from_param(value: str, field: str, mode: str = "RGB") -> Image.Image:
    """A job param's base64 PNG/JPEG as a loaded PIL image in `mode`. Raises ValueError (naming `field`)
    for one that does not decode: the gateway checked it, so only a job written by hand gets here."""
    try:
        picture = Image.open(io.BytesIO(base64.b64decode(value, validate=True)))
        picture.load()
    except (binascii.Error, OSError, ValueError) as error:
        raise ValueError(f"{field}: not a decodable base64 PNG or JPEG ({error})") from None
    return picture.convert(mode)
