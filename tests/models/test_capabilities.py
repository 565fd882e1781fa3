"""models.capabilities: what a checkpoint can do, from its unclip.json alone, without torch."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from models.capabilities import NO_IMAGE_ENCODER, OPERATIONS, UnsupportedOperation, read_capabilities
from models.checkpoint import DEFAULT_FOLDER, init_checkpoint, load_checkpoint
from models.config import named_config

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return init_checkpoint(tmp_path_factory.mktemp("tiny"), "tiny", seed=0)


def test_a_saved_checkpoint_records_its_parts_and_parameter_counts(tiny: Path) -> None:
    document = json.loads((tiny / "unclip.json").read_text())
    assert document["parts"] == ["clip_text", "clip_image", "prior", "decoder", "sr256", "sr1024"]
    models = load_checkpoint(tiny)
    counts = {name: sum(p.numel() for p in part.parameters()) for name, part in models.components().items()}
    capabilities = read_capabilities(tiny)
    assert capabilities.parameters == document["parameters"] == counts
    assert capabilities.operations == OPERATIONS
    assert capabilities.largest_size == 1024
    assert (capabilities.shipped, capabilities.imported_from) == (False, None)


def test_a_checkpoint_written_before_the_summary_loads_and_reads_the_same(tiny: Path, tmp_path: Path) -> None:
    """unclip.json without parts/parameters (and a clip config without image_encoder): every part,
    parameter counts from the safetensors headers."""
    old = tmp_path / "old"
    old.mkdir()
    for file in tiny.iterdir():
        (old / file.name).write_bytes(file.read_bytes())
    document = json.loads((old / "unclip.json").read_text())
    for key in ("parts", "parameters"):
        del document[key]
    for key in ("image_encoder", "text_mlp_width", "vision_mlp_width", "image_resize", "image_mean"):
        del document["clip"][key]
    (old / "unclip.json").write_text(json.dumps(document))

    assert load_checkpoint(old).clip.visual is not None
    assert dataclasses.replace(read_capabilities(old), folder=tiny) == read_capabilities(tiny)


def test_the_shipped_checkpoint_is_marked_shipped() -> None:
    capabilities = read_capabilities(DEFAULT_FOLDER)
    assert capabilities.shipped and capabilities.imported_from is None
    assert capabilities.operations == OPERATIONS and capabilities.largest_size == 1024
    assert set(capabilities.parameters) == {"clip", "prior", "decoder", "sr256", "sr1024", "reader"}


def test_an_image_operation_on_a_text_only_checkpoint_is_refused(tmp_path: Path) -> None:
    config = named_config("tiny")
    config = dataclasses.replace(config, clip=dataclasses.replace(config.clip, image_encoder=False))
    capabilities = read_capabilities(init_checkpoint(tmp_path / "text", config))
    assert "clip_image" not in capabilities.parts and capabilities.operations == ("generate", "inpaint")
    assert capabilities.refusal("generate") is None
    for operation in ("variation", "interpolate", "text_diff"):
        assert capabilities.refusal(operation) == NO_IMAGE_ENCODER
        with pytest.raises(UnsupportedOperation, match="--image-encoder"):
            capabilities.check(operation)
    assert "unknown operation 'upscale'" in (capabilities.refusal("upscale") or "")


def test_reading_capabilities_never_imports_torch(tiny: Path) -> None:
    code = (
        "import sys; from models.capabilities import read_capabilities; "
        f"print(read_capabilities({str(tiny)!r}).operations); assert 'torch' not in sys.modules"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "variation" in done.stdout
