"""Images that arrive in requests: base64 or raw bytes → a checked PIL image (→ `service.jobs.codec`'s
base64 PNG in a job's params, Contract C).

The format is sniffed from the bytes (never from a declared content type), only PNG and JPEG are read,
and the pixel count is checked from the header before any pixel is decoded. Pillow's own
decompression-bomb guard (`Image.MAX_IMAGE_PIXELS`, which `create_app` sets to the same limit) only
fires past twice the limit; both paths end in the same `ImageError`.
"""

from __future__ import annotations

import base64
import binascii
import functools
import io
import re
import warnings
from collections.abc import Callable
from typing import ParamSpec, TypeVar

import anyio.to_thread
from PIL import Image

from service.jobs.codec import png_bytes

MAGIC_NUMBERS: dict[bytes, str] = {
    b"\x89PNG\r\n\x1a\n": "PNG",
    b"\xff\xd8\xff": "JPEG",
    b"GIF87a": "GIF",
    b"GIF89a": "GIF",
    b"BM": "BMP",
    b"II*\x00": "TIFF",
    b"MM\x00*": "TIFF",
    b"\x00\x00\x01\x00": "ICO",
    b"%PDF": "PDF",
    b"<svg": "SVG",
    b"<?xml": "XML (SVG?)",
}
ACCEPTED_FORMATS = ("PNG", "JPEG")


P = ParamSpec("P")
R = TypeVar("R")
OBJECT_REPR = re.compile(r"\s*<[^<>]* at 0x[0-9a-fA-F]+>")


async def off_loop(function: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
    """`function(*args, **kwargs)` in a worker thread: decoding a large image takes the CPU for a while,
    and on the event loop it would stall every other request meanwhile."""
    return await anyio.to_thread.run_sync(functools.partial(function, *args, **kwargs))


def pillow_reason(error: BaseException) -> str:
    """Pillow's message without the Python object reprs some carry (`<_io.BytesIO object at 0x…>`)."""
    return OBJECT_REPR.sub("", str(error)).strip() or type(error).__name__


class ImageError(ValueError):
    """A request image that cannot be used; `field` names the request field, the message what to fix."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def sniff_format(data: bytes) -> str:
    """The format the bytes start with ("PNG", "JPEG", "GIF", …, "WEBP") or "unknown"."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    for magic, name in MAGIC_NUMBERS.items():
        if data.startswith(magic):
            return name
    return "unknown"


def decode_base64(text: str, field: str) -> bytes:
    """The bytes of a base64 string; a `data:image/...;base64,` prefix and line breaks are allowed."""
    if text.startswith("data:"):
        _, _, text = text.partition(",")
    try:
        data = base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise ImageError(
            field, "is not valid base64; send the PNG or JPEG file's bytes base64-encoded"
        ) from None
    if not data:
        raise ImageError(field, "is empty; send a base64-encoded PNG or JPEG")
    return data


def open_image(data: bytes, field: str, max_pixels: int) -> Image.Image:
    """A fully decoded PNG/JPEG image, after the format and the header's pixel count were checked."""
    found = sniff_format(data)
    if found not in ACCEPTED_FORMATS:
        described = "not an image format we recognise" if found == "unknown" else f"a {found}"
        raise ImageError(field, f"must be a PNG or JPEG image, but the bytes are {described}")
    try:
        with warnings.catch_warnings():
            # Between 1x and 2x Pillow's limit it only warns; our own check below gives the message.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=[found])
    except Image.DecompressionBombError:
        raise ImageError(
            field, f"has more than {max_pixels} pixels (the limit); send a smaller image"
        ) from None
    except (OSError, SyntaxError, ValueError) as error:
        reason = pillow_reason(error)
        raise ImageError(field, f"is not a readable {found} ({reason}); check the file") from None
    width, height = image.size
    if width * height > max_pixels:
        raise ImageError(
            field,
            f"is {width}x{height} = {width * height} pixels, over the limit of {max_pixels}; "
            "send a smaller image",
        )
    if width == 0 or height == 0:
        raise ImageError(field, f"is {width}x{height}; an image needs at least one pixel")
    try:
        image.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise ImageError(
            field, f"is a damaged or truncated {found} ({pillow_reason(error)}); check the file"
        ) from None
    return image


def read_request_image(text: str, field: str, max_pixels: int) -> Image.Image:
    """A base64 request field → a checked, decoded image."""
    return open_image(decode_base64(text, field), field, max_pixels)


def as_rgb(image: Image.Image) -> Image.Image:
    """Drops alpha (and palettes); the pipeline works on RGB."""
    return image if image.mode == "RGB" else image.convert("RGBA").convert("RGB")


def has_alpha(image: Image.Image) -> bool:
    return (
        image.mode in ("RGBA", "LA", "PA")
        or (image.mode == "P" and "transparency" in image.info)
        or (image.mode in ("RGB", "L") and "transparency" in image.info)
    )


def repaint_mask_from_alpha(image: Image.Image) -> Image.Image:
    """OpenAI's convention: fully transparent pixels (alpha 0) are repainted → mode "L", 255 = repaint."""
    alpha = image.convert("RGBA").getchannel("A")
    return alpha.point(lambda value: 255 if value == 0 else 0)


def check_same_size(image: Image.Image, mask: Image.Image, mask_field: str = "mask") -> None:
    if mask.size != image.size:
        raise ImageError(
            mask_field,
            f"is {mask.width}x{mask.height} but the image is {image.width}x{image.height}; "
            "the mask must be the same size as the image",
        )


def check_something_to_repaint(mask: Image.Image, mask_field: str, how: str) -> None:
    """`mask` is mode "L" with 255 = repaint; a mask with nothing to repaint is a client mistake."""
    if mask.getextrema()[1] < 255:
        raise ImageError(mask_field, f"marks no pixel to repaint; {how}")


def downscale(png: bytes, size: int, field: str = "size") -> bytes:
    """A stored result PNG resized to `size`x`size` (Lanczos), for sizes the pipeline does not stop at."""
    image = Image.open(io.BytesIO(png))
    if size > max(image.size):
        raise ImageError(
            field, f"can only shrink the {image.width}x{image.height} image, not enlarge it to {size}"
        )
    if image.size == (size, size):
        return png
    return png_bytes(image.convert("RGB").resize((size, size), Image.Resampling.LANCZOS))
