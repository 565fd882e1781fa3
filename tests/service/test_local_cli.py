"""`unclip <command>` in-process, end to end through service.cli.main on a tiny random checkpoint."""

import dataclasses
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from models.capabilities import NO_IMAGE_ENCODER
from models.checkpoint import init_checkpoint
from models.config import named_config
from service.cli import main

REPO = Path(__file__).resolve().parents[2]

FAST = ["--size", "64", "--prior-steps", "2", "--decoder-steps", "2", "--device", "cpu"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("checkpoint")
    assert main(["init-checkpoint", str(folder), "--config", "tiny", "--seed", "1"]) == 0
    return folder


def flags(checkpoint: Path, output: Path) -> list[str]:
    return [*FAST, "--checkpoint", str(checkpoint), "-o", str(output)]


def picture(path: Path, size: tuple[int, int] = (80, 60)) -> Path:
    yy, xx = np.mgrid[0 : size[1], 0 : size[0]]
    pixels = np.stack([xx * 3, yy * 4, np.full_like(xx, 100)], -1).clip(0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def opened(path: Path) -> Image.Image:
    with Image.open(path) as image:
        assert image.format == "PNG"
        return image.convert("RGB")


def test_init_checkpoint_writes_a_loadable_folder(checkpoint: Path, capsys: pytest.CaptureFixture) -> None:
    assert (checkpoint / "unclip.json").is_file() and (checkpoint / "decoder.safetensors").is_file()
    assert main(["init-checkpoint", str(checkpoint.parent / "other"), "--config", "huge"]) == 2
    assert "huge" in capsys.readouterr().err


def test_generate_writes_numbered_pngs_and_shows_progress(
    checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    output = tmp_path / "art" / "circle.png"

    assert main(["generate", "a red circle", "--n", "2", "--seed", "4", *flags(checkpoint, output)]) == 0

    written = [tmp_path / "art" / "circle_0.png", tmp_path / "art" / "circle_1.png"]
    assert sorted((tmp_path / "art").iterdir()) == written
    images = [opened(path) for path in written]
    assert all(image.size == (64, 64) for image in images)
    assert not np.array_equal(np.asarray(images[0]), np.asarray(images[1]))  # seeds 4 and 5
    captured = capsys.readouterr()
    assert all(str(path) in captured.out for path in written)
    assert "prior" in captured.err and "decoder" in captured.err  # the tqdm bars
    assert "truncated" not in captured.err


def test_generate_says_what_the_shipped_model_drew_when_it_rewrote_the_prompt(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    prompt = "Show me a triangle that is RED, please!"
    assert main(["generate", prompt, *FAST, "-o", str(tmp_path / "t.png")]) == 0
    assert "drew 'a red triangle'" in capsys.readouterr().out
    assert main(["generate", "a red triangle", *FAST, "-o", str(tmp_path / "t.png")]) == 0
    assert "drew" not in capsys.readouterr().out  # its own caption: drawn as given


def test_generate_warns_about_a_truncated_prompt(
    checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    long_prompt = " ".join(["a big red circle"] * 25)

    assert main(["generate", long_prompt, *flags(checkpoint, tmp_path / "long.png")]) == 0

    assert "truncated" in capsys.readouterr().err
    assert opened(tmp_path / "long.png").size == (64, 64)


def test_vary_with_eta_zero_reconstructs_into_one_file(checkpoint: Path, tmp_path: Path) -> None:
    image = picture(tmp_path / "in.png", size=(64, 64))
    output = tmp_path / "vary.png"

    assert main(["vary", str(image), "--eta", "0", *flags(checkpoint, output)]) == 0

    # The untrained decoder predicts eps = 0, which inverts exactly: eta 0 gives the input back.
    difference = np.abs(np.asarray(opened(output), int) - np.asarray(opened(image), int))
    assert difference.max() <= 1


def test_interpolate_and_text_diff_write_one_png_per_frame(checkpoint: Path, tmp_path: Path) -> None:
    a, b = picture(tmp_path / "a.png"), picture(tmp_path / "b.jpg", size=(50, 90))

    assert main(["interpolate", str(a), str(b), "--frames", "3", *flags(checkpoint, tmp_path / "i.png")]) == 0
    assert (
        main(["text-diff", str(a), "a blue square", "--frames", "2", *flags(checkpoint, tmp_path / "t.png")])
        == 0
    )

    for name in ("i_0", "i_1", "i_2", "t_0", "t_1"):
        assert opened(tmp_path / f"{name}.png").size == (64, 64)
    assert not (tmp_path / "i_3.png").exists()


def test_inpaint_repaints_the_white_part_of_the_mask_only(checkpoint: Path, tmp_path: Path) -> None:
    image = picture(tmp_path / "in.png", size=(64, 64))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (0, 0, 32, 64))  # white left half = repaint
    mask.save(tmp_path / "mask.png")
    output = tmp_path / "filled.png"

    assert (
        main(["inpaint", str(image), str(tmp_path / "mask.png"), "a circle", *flags(checkpoint, output)]) == 0
    )

    filled, original = np.asarray(opened(output), int), np.asarray(opened(image), int)
    assert np.abs(filled[:, 32:] - original[:, 32:]).max() <= 1
    assert np.abs(filled[:, :32] - original[:, :32]).mean() > 10


def test_bad_input_is_a_message_and_exit_code_2(
    checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    image = picture(tmp_path / "in.png")
    small_mask = picture(tmp_path / "mask.png", size=(10, 10))

    assert main(["vary", str(tmp_path / "nowhere.png"), *flags(checkpoint, tmp_path / "o.png")]) == 2
    assert "nowhere.png" in capsys.readouterr().err
    assert main(["inpaint", str(image), str(small_mask), "x", *flags(checkpoint, tmp_path / "o.png")]) == 2
    assert "10x10" in capsys.readouterr().err
    assert main(["generate", "x", "--n", "0", *flags(checkpoint, tmp_path / "o.png")]) == 2
    assert "--n" in capsys.readouterr().err
    strong = ["text-diff", str(image), "x", "--strength", "1.5"]
    assert main([*strong, *flags(checkpoint, tmp_path / "o.png")]) == 2
    assert "text_diff_strength must be in (0, 1], got 1.5" in capsys.readouterr().err
    assert main(["generate", "x", *flags(tmp_path / "no-checkpoint", tmp_path / "o.png")]) == 2
    assert "missing" in capsys.readouterr().err
    assert not (tmp_path / "o.png").exists()


def test_train_and_evaluate_are_handed_to_the_training_command(tmp_path: Path) -> None:
    out = tmp_path / "trained"
    training = ["--config", "tiny", "--stage", "sr256", "--steps", "2", "--batch-size", "2", "--pool", "4"]
    rest = ["--cache", str(tmp_path / "cache"), "--workers", "1", "--no-progress"]
    assert main(["train", *training, "--out", str(out), *rest]) == 0

    fresh = tmp_path / "fresh"
    assert main(["init-checkpoint", str(fresh), "--config", "tiny", "--seed", "0"]) == 0
    same = [(out / f"{part}.safetensors").read_bytes() == (fresh / f"{part}.safetensors").read_bytes()
            for part in ("clip", "sr256")]  # fmt: skip
    assert same == [True, False]  # only the named stage trained, from the seed's initial weights
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", "--help"])
    assert exit_info.value.code == 0


@pytest.fixture(scope="module")
def text_only(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoint whose CLIP has no image tower, as `unclip import karlo` writes for karlo-v1-alpha."""
    config = named_config("tiny")
    config = dataclasses.replace(config, clip=dataclasses.replace(config.clip, image_encoder=False))
    return init_checkpoint(tmp_path_factory.mktemp("text-only"), config, seed=2)


def unclip(*args: str) -> subprocess.CompletedProcess[str]:
    """The installed `unclip` console script, running this tree's code."""
    command = shutil.which("unclip", path=str(Path(sys.executable).parent)) or shutil.which("unclip")
    assert command is not None, "the unclip console script is not installed"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([command, *args], capture_output=True, text=True, env=env, cwd=REPO, timeout=300)


@pytest.mark.parametrize(
    "command",
    [
        ["vary", "{image}"],
        ["interpolate", "{image}", "{image}", "--frames", "2"],
        ["text-diff", "{image}", "a blue square"],
    ],
)
def test_image_operations_without_an_image_encoder_exit_with_one_line(
    text_only: Path, tmp_path: Path, command: list[str]
) -> None:
    image = str(picture(tmp_path / "in.png"))
    output = tmp_path / "o.png"
    done = unclip(*(part.format(image=image) for part in command), *flags(text_only, output))
    assert done.returncode != 0
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert NO_IMAGE_ENCODER in lines[0] and "--image-encoder" in lines[0]
    assert not output.exists()


def test_generate_and_inpaint_run_without_an_image_encoder(text_only: Path, tmp_path: Path) -> None:
    image = picture(tmp_path / "in.png", size=(64, 64))
    mask = Image.new("L", (64, 64), 255)
    mask.save(tmp_path / "mask.png")
    assert main(["generate", "a red circle", *flags(text_only, tmp_path / "g.png")]) == 0
    inpaint = ["inpaint", str(image), str(tmp_path / "mask.png"), "x"]
    assert main([*inpaint, *flags(text_only, tmp_path / "i.png")]) == 0
    assert opened(tmp_path / "g.png").size == opened(tmp_path / "i.png").size == (64, 64)


def test_the_refusal_comes_before_any_weight_is_read(
    text_only: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    config_only = tmp_path / "config-only"
    config_only.mkdir()
    shutil.copy(text_only / "unclip.json", config_only)
    image = picture(tmp_path / "in.png")
    assert main(["vary", str(image), *flags(config_only, tmp_path / "o.png")]) == 2
    assert NO_IMAGE_ENCODER in capsys.readouterr().err
    assert main(["generate", "x", *flags(config_only, tmp_path / "o.png")]) == 2
    assert "missing" in capsys.readouterr().err  # an op it can run goes on to load the weights
