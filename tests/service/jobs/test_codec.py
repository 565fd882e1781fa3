"""The image codec both sides share."""

from __future__ import annotations

import base64
import io

import pytest
from PIL import Image

from service.jobs.codec import image_from_param, png_base64, png_bytes


def test_png_base64_round_trips_pixels():
    image = Image.new("RGB", (8, 8), (9, 99, 199))
    back = Image.open(io.BytesIO(base64.b64decode(png_base64(image))))
    assert back.format == "PNG"
    assert back.getpixel((3, 3)) == (9, 99, 199)


def test_a_param_image_decodes_in_the_asked_mode_and_garbage_names_its_field():
    image = Image.new("RGB", (4, 2), (255, 255, 255))
    assert image_from_param(png_base64(image), "mask", mode="L").getpixel((1, 1)) == 255
    assert image_from_param(base64.b64encode(png_bytes(image)).decode(), "image").size == (4, 2)
    with pytest.raises(ValueError, match=r"^image_b: not a decodable base64 PNG or JPEG"):
        image_from_param(base64.b64encode(b"not an image").decode(), "image_b")
