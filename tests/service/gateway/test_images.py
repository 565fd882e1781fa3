import io

import pytest
from PIL import Image

from models.contract import repaint_mask
from service.gateway import images
from tests.service.gateway.gateway_images import b64, gif, jpeg, png, png_header_only, rgba_with_hole

LIMIT = 4096 * 4096


def test_png_and_jpeg_decode_whatever_the_prefix():
    decoded = images.read_request_image("data:image/png;base64," + b64(png((20, 10))), "image", LIMIT)
    assert decoded.size == (20, 10)
    assert decoded.format == "PNG"
    assert images.read_request_image(b64(jpeg((12, 12))), "image", LIMIT).format == "JPEG"


def test_bad_base64_is_named():
    with pytest.raises(images.ImageError, match=r"^image_a: is not valid base64") as caught:
        images.read_request_image("not base64!!", "image_a", LIMIT)
    assert caught.value.field == "image_a"


@pytest.mark.parametrize(
    ("data", "found"),
    [
        (gif(), "a GIF"),
        (b"RIFF\x00\x00\x00\x00WEBPVP8 ", "a WEBP"),
        (b"hello, this is text", "not an image format we recognise"),
    ],
)
def test_only_png_and_jpeg_are_accepted_and_the_found_format_is_named(data, found):
    with pytest.raises(images.ImageError, match=f"must be a PNG or JPEG image, but the bytes are {found}"):
        images.open_image(data, "image", LIMIT)


def test_pixel_limit_is_checked_on_the_header_before_decoding():
    # Within 2x the limit Pillow only warns; our check names the exact size.
    with pytest.raises(
        images.ImageError, match=r"is 5000x5000 = 25000000 pixels, over the limit of 16777216"
    ):
        images.open_image(png_header_only(5000, 5000), "image", LIMIT)
    # ...and the same bytes cannot be decoded at all, so only the header can have been read.
    with pytest.raises((OSError, SyntaxError, ValueError)):
        Image.open(io.BytesIO(png_header_only(50, 50))).load()


def test_a_huge_header_is_refused_by_the_bomb_guard_too():
    Image.MAX_IMAGE_PIXELS = LIMIT
    with pytest.raises(images.ImageError, match=r"more than 16777216 pixels"):
        images.open_image(png_header_only(100_000, 100_000), "mask", LIMIT)


def test_a_truncated_png_is_a_clear_error():
    whole = png((64, 64), (1, 2, 3))
    with pytest.raises(images.ImageError, match=r"^image: is (a damaged or truncated|not a readable) PNG"):
        images.open_image(whole[: len(whole) // 2], "image", LIMIT)


def test_mask_size_must_match_image():
    image = Image.new("RGB", (64, 64))
    with pytest.raises(images.ImageError, match=r"mask: is 32x16 but the image is 64x64"):
        images.check_same_size(image, Image.new("L", (32, 16)))


def test_white_mask_becomes_binary_l_mask():
    mask = Image.new("RGB", (4, 1), (0, 0, 0))
    mask.putpixel((1, 0), (255, 255, 255))
    mask.putpixel((2, 0), (200, 200, 200))
    mask.putpixel((3, 0), (40, 40, 40))
    converted = repaint_mask(mask)
    assert converted.mode == "L"
    assert list(converted.tobytes()) == [0, 255, 255, 0]


def test_alpha_zero_pixels_are_the_repaint_area():
    rgba = Image.open(io.BytesIO(rgba_with_hole((32, 32), (8, 8, 24, 24))))
    mask = images.repaint_mask_from_alpha(rgba)
    assert mask.mode == "L"
    assert mask.getpixel((10, 10)) == 255
    assert mask.getpixel((2, 2)) == 0
    assert sum(1 for value in mask.tobytes() if value == 255) == 16 * 16


def test_downscale_changes_size_only_when_needed():
    big = png((64, 64), (50, 60, 70))
    assert images.downscale(big, 64) == big
    assert Image.open(io.BytesIO(images.downscale(big, 16))).size == (16, 16)
