"""Training data of the shapes world: pools of rendered pictures (cached on disk) and fresh captions.

A pool is a fixed list of trainable scenes (`shapes.training_scene`) rendered once, as uint8 tensors:
- `picture_pool`: whole pictures `[N, 3, S, S]` (64 px for CLIP, the prior and the decoder);
- `crop_pool`: one `crop`×`crop` region per scene of its S px picture, placed across a shape's edge
  (flat regions teach an upsampler nothing), for the upsamplers.
Pictures are drawn by PIL, which is slow next to a GPU step, so pools are rendered by worker processes and
cached as `.npy` files named by a digest of the scenes, the sizes and the renderer's source.

Captions are drawn afresh for every batch (`captions`): the same picture is seen under many phrasings.
`positives` says which captions of a batch are true of which pictures (`[N, B]` bool, from the facts the
caption states), for CLIP's contrastive loss where "a red circle" is true of many pictures at once.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import torch

from models.train import shapes
from models.train.captions import training_caption
from models.train.shapes import KINDS, POSITIONS, SIZES, Scene, SceneSpec

COLOUR_NAMES = tuple(shapes.COLOURS)
DEFAULT_CACHE = Path.home() / ".cache" / "unclip-serve" / "shapes"
PARALLEL_FROM = 1000  # pictures; below this, starting worker processes costs more than it saves


def training_scenes(count: int, seed: int) -> list[Scene]:
    rng = random.Random(f"scenes/{seed}")
    return [shapes.training_scene(rng) for _ in range(count)]


# ------------------------------------------------------------------------------------------------ pools


def picture_pool(
    scenes: Sequence[Scene], size: int, cache: Path | None = DEFAULT_CACHE, workers: int = 1
) -> torch.Tensor:
    """Every scene rendered at `size` px: `[N, 3, size, size]` uint8."""
    jobs = [(scene, size, 0, 0, size) for scene in scenes]
    return _rendered(jobs, f"pictures{size}", cache, workers)


def crop_pool(
    scenes: Sequence[Scene],
    size: int,
    crop: int,
    seed: int,
    cache: Path | None = DEFAULT_CACHE,
    workers: int = 1,
    align: int = 4,
) -> torch.Tensor:
    """One `crop` px region of each scene's `size` px picture: `[N, 3, crop, crop]` uint8.

    Corners are multiples of `align`, so a crop box-filtered by `align` is exactly the crop of the
    smaller picture (an upsampler's low-resolution input is the same scene at the same place).
    """
    rng = random.Random(f"crops/{seed}/{size}/{crop}")
    jobs = [(scene, size, *edge_crop(scene, size, crop, align, rng), crop) for scene in scenes]
    return _rendered(jobs, f"crops{size}-{crop}-{align}", cache, workers)


def edge_crop(scene: Scene, size: int, crop: int, align: int, rng: random.Random) -> tuple[int, int]:
    """(left, top) of a crop centred near a random point of a random shape's outline."""
    shape = rng.choice(scene.shapes)
    x0, y0, x1, y1 = shape.box
    side = rng.randrange(4)
    along = rng.random()
    x, y = [(x0 + along * (x1 - x0), y0), (x1, y0 + along * (y1 - y0)), (x0 + along * (x1 - x0), y1),
            (x0, y0 + along * (y1 - y0))][side]  # fmt: skip
    jitter = crop / size / 4

    def corner(centre: float) -> int:
        left = (centre + rng.uniform(-jitter, jitter)) * size - crop / 2
        return int(min(max(round(left / align) * align, 0), size - crop))

    return corner(x), corner(y)


def _render_job(job: tuple[Scene, int, int, int, int]) -> np.ndarray:
    return np.asarray(shapes.render_crop(*job), dtype=np.uint8)


def _rendered(
    jobs: list[tuple[Scene, int, int, int, int]], kind: str, cache: Path | None, workers: int
) -> torch.Tensor:
    path = None
    if cache is not None:
        digest = hashlib.sha256(repr(jobs).encode())
        digest.update(Path(shapes.__file__).read_bytes())
        path = Path(cache) / f"{kind}-{len(jobs)}-{digest.hexdigest()[:16]}.npy"
        if path.is_file():
            return torch.from_numpy(np.load(path, allow_pickle=False)).permute(0, 3, 1, 2)
    if workers > 1 and len(jobs) >= PARALLEL_FROM:
        # spawn, not fork: the trainer may already hold a CUDA context. The children import only the
        # renderer (PIL), not torch, and send PIL images back.
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
            images = pool.map(shapes.render_crop, *zip(*jobs, strict=True), chunksize=64)
            arrays = [np.asarray(image, dtype=np.uint8) for image in images]
    else:
        arrays = [_render_job(job) for job in jobs]
    pictures = np.stack(arrays)  # [N, S, S, 3]
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        staging = path.with_suffix(f".{random.getrandbits(32):08x}.tmp.npy")
        np.save(staging, pictures)
        staging.replace(path)  # atomic: a concurrent run never reads half a file
    return torch.from_numpy(pictures).permute(0, 3, 1, 2)


def to_model_range(pictures: torch.Tensor) -> torch.Tensor:
    """uint8 `[B, 3, H, W]` → float32 in [-1, 1]."""
    return pictures.float() / 127.5 - 1.0


# --------------------------------------------------------------------------------------------- captions


def captions(scenes: Sequence[Scene], rng: random.Random) -> tuple[list[str], list[SceneSpec]]:
    """A fresh training caption per scene, and the facts it states."""
    specs = [shapes.training_description(scene, rng) for scene in scenes]
    return [training_caption(spec, rng) for spec in specs], specs


# Facts as integer rows: [background, kind, colour, size, position of shape 1, the same of shape 2].
# A scene's missing second shape is ABSENT; a fact a caption leaves out is ANY.
ANY, ABSENT = -1, -2
_VOCABS = (KINDS, COLOUR_NAMES, tuple(SIZES), tuple(POSITIONS))


def scene_facts(scenes: Sequence[Scene]) -> torch.Tensor:
    rows = []
    for scene in scenes:
        row = [COLOUR_NAMES.index(scene.background)]
        for i in range(2):
            if i < len(scene.shapes):
                s = scene.shapes[i]
                row += [
                    vocab.index(v)
                    for vocab, v in zip(_VOCABS, (s.kind, s.colour, s.size, s.position), strict=True)
                ]
            else:
                row += [ABSENT] * 4
        rows.append(row)
    return torch.tensor(rows, dtype=torch.long).reshape(-1, 9)


def spec_facts(specs: Sequence[SceneSpec]) -> torch.Tensor:
    rows = []
    for spec in specs:
        row = [ANY if spec.background is None else COLOUR_NAMES.index(spec.background)]
        for i in range(2):
            if i < len(spec.shapes):
                s = spec.shapes[i]
                values = (s.kind, s.colour, s.size, s.position)
                row += [
                    ANY if v is None else vocab.index(v) for vocab, v in zip(_VOCABS, values, strict=True)
                ]
            else:
                row += [ABSENT] * 4
        rows.append(row)
    return torch.tensor(rows, dtype=torch.long).reshape(-1, 9)


def positives(scenes: torch.Tensor, specs: torch.Tensor) -> torch.Tensor:
    """scene facts `[N, 9]`, caption facts `[B, 9]` → `[N, B]` bool: the caption is true of the scene
    (`shapes.scene_matches`, for whole batches at once)."""
    scene, spec = scenes[:, None, :], specs[None, :, :]

    def agree(a: slice, b: slice) -> torch.Tensor:  # caption facts a against scene facts b, [N, B]
        return ((spec[..., a] == ANY) | (spec[..., a] == scene[..., b])).all(-1)

    background = agree(slice(0, 1), slice(0, 1))
    first, second = slice(1, 5), slice(5, 9)
    in_order = agree(first, first) & agree(second, second)
    swapped = agree(first, second) & agree(second, first)
    return background & (in_order | swapped)
