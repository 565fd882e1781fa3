"""Test images made with Pillow: real PNG/JPEG/GIF bytes, an RGBA image with a transparent hole, and a
PNG header that claims any size without any pixel data."""

from __future__ import annotations

import base64
import io
import struct
import zlib
from typing import Any

from PIL import Image


def png(size: tuple[int, int] = (32, 32), color: Any = (200, 30, 30), mode: str = "RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def jpeg(size: tuple[int, int] = (32, 32), color: Any = (30, 200, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="JPEG")
    return buffer.getvalue()


def gif(size: tuple[int, int] = (16, 16)) -> bytes:
    buffer = io.BytesIO()
    Image.new("P", size, 1).save(buffer, format="GIF")
    return buffer.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims width x height, followed by a few bytes of pixel data that cannot be
    decoded: a refusal that names the size proves the check ran on the header alone."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", b"\x00" * 16)


def rgba_with_hole(
    size: tuple[int, int] = (32, 32), hole: tuple[int, int, int, int] = (8, 8, 24, 24)
) -> bytes:
    """An opaque RGBA PNG with a fully transparent rectangle (the area an OpenAI edit repaints)."""
    image = Image.new("RGBA", size, (10, 120, 200, 255))
    image.paste((0, 0, 0, 0), hole)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
