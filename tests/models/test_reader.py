"""The prompt reader: its facts, its canonical captions, its masking, its training loss, and the pipeline
drawing what it rewrote (models/reader.py, models/train/reader.py)."""

import random
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from models.capabilities import read_capabilities
from models.checkpoint import init_checkpoint, load_checkpoint, save_checkpoint
from models.contract import REVISED_PROMPT_KEY
from models.pipeline import UnCLIPPipeline
from models.reader import (
    NONE,
    PromptReader,
    SceneReading,
    ShapeReading,
    allowed,
    canonical_caption,
    revise,
)
from models.tokenizer import Tokenizer, build_tokenizer
from models.train import shapes
from models.train.captions import grammar_caption, training_caption
from models.train.reader import (
    UNSCORED,
    ReaderStage,
    fact_targets,
    reader_config,
    reading_loss,
    with_unknown_words,
)
from models.train.shapes import SceneSpec, ShapeSpec
from models.train.stage import TrainingData
from tests.models.test_pipeline import FAST, lively_checkpoint

TOKENIZER = build_tokenizer(sorted(shapes.caption_words()), 32)


def small_reader(seed: int = 0, tokenizer: Tokenizer = TOKENIZER) -> PromptReader:
    torch.manual_seed(seed)
    config = reader_config(tokenizer)
    return PromptReader(type(config)(**{**config.to_dict(), "width": 32, "layers": 1, "heads": 2})).eval()


def reading_of(spec: SceneSpec) -> SceneReading:
    return SceneReading(
        tuple(ShapeReading(s.kind, s.colour, s.size, s.position) for s in spec.shapes), spec.background
    )


class FixedReader(PromptReader):
    """Reads `reading` from every prompt: for what the pipeline does with a reading."""

    def __init__(self, reading: SceneReading) -> None:
        super().__init__(small_reader().config)
        self.reading = reading

    def read(self, tokenizer: Tokenizer, prompts: list[str]) -> list[SceneReading | None]:
        return [self.reading] * len(prompts)


def test_the_canonical_caption_is_the_first_training_template_of_the_facts() -> None:
    rng = random.Random(0)
    for _ in range(300):
        spec = shapes.training_description(shapes.training_scene(rng), rng)
        assert canonical_caption(reading_of(spec)) == shapes.phrasings(spec)[0]


@pytest.mark.parametrize(
    ("reading", "ok"),
    [
        (SceneReading((ShapeReading("circle", "red"),), "blue"), True),
        (SceneReading((ShapeReading("circle", "red"),), "red"), False),  # the shape would vanish
        (SceneReading((ShapeReading("circle", "red"), ShapeReading("square", "red"))), False),
        (
            SceneReading(
                (ShapeReading("circle", "red", None, "left"), ShapeReading("square", "blue", None, "right"))
            ),
            True,
        ),
        (
            SceneReading(
                (ShapeReading("circle", "red", None, "left"), ShapeReading("square", "blue", None, "top"))
            ),
            False,
        ),
        (
            SceneReading((ShapeReading("circle", "red", None, "center"), ShapeReading("square", "blue"))),
            False,
        ),
        (SceneReading(()), False),
        (SceneReading((ShapeReading("red", "circle"),)), False),  # a pointer at the wrong kind of word
    ],
)
def test_only_scenes_the_world_draws_are_allowed(reading: SceneReading, ok: bool) -> None:
    assert allowed(reading, small_reader().config) is ok


def test_a_reading_does_not_depend_on_the_padding_or_the_rest_of_the_batch() -> None:
    reader = small_reader()
    alone, _ = TOKENIZER.encode(["a red circle!"])  # "!" is id 0, the padding id: it must still be read
    batch, _ = TOKENIZER.encode(["a red circle!", "a large blue square on the left and a green triangle"])
    with torch.no_grad():
        one, both = reader(alone), reader(batch)
        shorter, _ = TOKENIZER.encode(["a red circle"])
        without_mark = reader(shorter)
    for name in one:
        torch.testing.assert_close(one[name][0], both[name][0], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(one["background"], without_mark["background"])


def targets_of(spec: SceneSpec, text: str) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    reader = small_reader()
    encoded = reader.encode(TOKENIZER, [text])
    return encoded.ids, fact_targets(spec, encoded.words[0], reader.config)


def positions(target: torch.Tensor) -> list[int]:
    return [i - 1 if i else NONE for i in target.nonzero()[:, 0].tolist()]  # word positions; NONE first


def test_the_encoding_marks_colour_and_kind_words_and_only_whole_words() -> None:
    reader = small_reader()
    encoded = reader.encode(TOKENIZER, ["Two Circles: one RED and one blue, coloured", "a red circle"])
    named = [w for w in encoded.words[0] if w is not None]
    assert named == ["circle", "red", "blue"]  # "coloured" ends in the token "red</w>" but is no colour
    ids = encoded.ids[0].tolist()
    assert ids.count(reader.colour_marker) == 2 and ids.count(reader.kind_marker) == 1
    assert encoded.ids[1].tolist()[:5] == [TOKENIZER.sot_id, *TOKENIZER.tokens("a"), reader.colour_marker,
                                          reader.kind_marker, TOKENIZER.eot_id]  # fmt: skip
    assert encoded.ids[1].tolist()[5:] == [reader.padding] * (TOKENIZER.context_length - 5)


def test_targets_point_at_the_words_that_name_each_fact() -> None:
    spec = SceneSpec((ShapeSpec("square", "red", "large"),))
    _, one = targets_of(spec, "a large red square")  # SOT a large red square EOT
    assert positions(one["background"]) == [NONE]
    assert positions(one["kind"][0]) == [4] and positions(one["kind"][1]) == [NONE]
    assert positions(one["colour"][0]) == [3] and not one["colour"][1].any()  # not scored
    assert one["size"].tolist() == [2, UNSCORED] and one["position"].tolist() == [NONE, UNSCORED]
    pair = SceneSpec((ShapeSpec("circle", "red"), ShapeSpec("circle", "blue", None, "top")), "white")
    text = "two circles, one red and one blue at the top, white background"
    words = small_reader().encode(TOKENIZER, [text]).words[0]
    _, two = targets_of(pair, text)
    assert (
        positions(two["kind"][0]) == positions(two["kind"][1]) == [words.index("circle")]
    )  # one plural, both
    assert positions(two["colour"][1]) == [words.index("blue")]
    assert positions(two["background"]) == [words.index("white")]
    assert two["position"].tolist() == [NONE, 4]
    assert targets_of(pair, "two circles, one red and one blue")[1] is None  # the background is not said


def test_the_loss_scores_the_better_slot_order_for_two_shapes_only() -> None:
    reader = small_reader()
    text = "a blue circle and a white triangle on a red background"
    pair = SceneSpec((ShapeSpec("circle", "blue"), ShapeSpec("triangle", "white")), "red")
    ids, targets = targets_of(pair, text)
    _, swapped = targets_of(SceneSpec(pair.shapes[::-1], "red"), text)
    batched = [{k: v[None] for k, v in t.items()} for t in (targets, swapped)]
    logits = reader(ids)
    torch.testing.assert_close(reading_loss(logits, batched[0]), reading_loss(logits, batched[1]))
    ids, single = targets_of(SceneSpec((ShapeSpec("circle", "blue"),)), "a blue circle")
    single = {k: v[None] for k, v in single.items()}
    logits = {k: v.detach().requires_grad_() for k, v in reader(ids).items()}
    reading_loss(logits, single).sum().backward()
    assert not logits["colour"].grad[:, 1].any() and not logits["size"].grad[:, 1].any()  # slot 2: kind only
    assert logits["kind"].grad[:, 1].any() and logits["colour"].grad[:, 0].any()
    assert all(torch.isfinite(v.grad).all() for v in logits.values())


def test_unknown_words_go_between_the_words_and_keep_them_in_order() -> None:
    rng = random.Random(3)
    for _ in range(50):
        text = training_caption(SceneSpec((ShapeSpec("circle", "red"),), "blue"), rng)
        noisy = with_unknown_words(text, rng)
        words, added = text.split(" "), noisy.split(" ")
        assert 1 <= len(added) - len(words) <= 3
        it = iter(added)
        assert all(word in it for word in words)  # a subsequence


def test_the_stage_gives_a_checkpoint_without_a_reader_a_fresh_one(tmp_path: Path) -> None:
    models = load_checkpoint(init_checkpoint(tmp_path, "tiny"))
    assert models.reader is None
    stage = ReaderStage(models, TrainingData(0, cache=None), torch.device("cpu"))
    assert models.config.reader == reader_config(models.tokenizer) and stage.module is models.reader


def test_a_few_hundred_steps_teach_a_reader_to_point_at_the_colours_of_fresh_captions() -> None:
    reader = small_reader()
    models = SimpleNamespace(tokenizer=TOKENIZER, reader=reader, config=SimpleNamespace(reader=reader.config))
    stage = ReaderStage(models, TrainingData(0, cache=None), torch.device("cpu"))  # type: ignore[arg-type]
    optimizer = torch.optim.AdamW(stage.parameters(), lr=3e-3)
    rng = random.Random(0)
    for _ in range(300):
        loss, _ = stage.loss(stage.make_batch(32, rng), torch.Generator())
        optimizer.zero_grad()
        loss.mean().backward()
        optimizer.step()
    specs = [
        SceneSpec((ShapeSpec(k, c),), "white") for k in shapes.KINDS for c in shapes.COLOURS if c != "white"
    ]
    prompts = [grammar_caption(spec, rng) for spec in specs]  # held-out facts among them
    readings = reader.eval().read(TOKENIZER, prompts)
    right = sum(
        r is not None and (r.shapes[0].colour, r.background) == (s.shapes[0].colour, "white")
        for r, s in zip(readings, specs, strict=True)
    )
    assert right >= 14, list(zip(prompts, readings, strict=True))  # of 21 (19 here); untrained: none


def test_a_checkpoint_keeps_its_reader_and_says_it_has_one(tmp_path: Path) -> None:
    folder = lively_checkpoint(tmp_path / "ckpt")
    models = load_checkpoint(folder)
    models.reader = small_reader(seed=5, tokenizer=models.tokenizer)
    models.config.reader = models.reader.config
    save_checkpoint(models, folder)
    loaded = load_checkpoint(folder)
    assert loaded.reader is not None
    for key, value in models.reader.state_dict().items():
        torch.testing.assert_close(loaded.reader.state_dict()[key], value)
    assert "reader" in read_capabilities(folder).parts


def test_generate_draws_the_rewritten_prompt_and_says_so(tmp_path: Path) -> None:
    spec = SceneSpec((ShapeSpec("square", "green", "large"), ShapeSpec("circle", "red")), "white")
    caption = canonical_caption(reading_of(spec))
    folder = lively_checkpoint(tmp_path / "ckpt")
    pipeline = UnCLIPPipeline.from_checkpoint(folder, device="cpu", dtype="float32")
    pipeline.reader = FixedReader(reading_of(spec))
    sampling = pipeline.sampling(**FAST)

    rewritten = pipeline.generate(
        ["Draw me a big green square and a red circle on white!", caption], [4, 4], sampling
    )
    assert rewritten[0].info[REVISED_PROMPT_KEY] == caption
    assert REVISED_PROMPT_KEY not in rewritten[1].info  # already the caption: drawn as given
    pipeline.reader = None
    as_given = pipeline.generate(
        ["Draw me a big green square and a red circle on white!", caption], [4, 4], sampling
    )
    assert REVISED_PROMPT_KEY not in as_given[0].info
    assert rewritten[0].tobytes() == as_given[1].tobytes()  # the rewrite is what was drawn
    assert rewritten[0].tobytes() != as_given[0].tobytes()


def test_an_unsure_reading_leaves_the_prompt_as_given() -> None:
    reader = small_reader()
    reader.config = type(reader.config)(**{**reader.config.to_dict(), "confidence": 1.0})  # never that sure
    assert revise(reader, TOKENIZER, ["a red circle", "a cat"]) == [None, None]
    assert revise(None, TOKENIZER, ["a red circle"]) == [None]
