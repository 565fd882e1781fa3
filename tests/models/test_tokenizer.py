from pathlib import Path

import pytest
import torch
from transformers import CLIPTokenizer

from models.tokenizer import PAD_ID, Tokenizer, build_tokenizer

WORDS = ["a", "red", "green", "circle", "triangle", "on", "the", "left", "background", "don't"]


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return build_tokenizer(WORDS)


def test_ids_equal_transformers_clip_tokenizer_on_the_same_files(
    tokenizer: Tokenizer, tmp_path: Path
) -> None:
    tokenizer.save(tmp_path)
    reference = CLIPTokenizer(vocab=str(tmp_path / "vocab.json"), merges=str(tmp_path / "merges.txt"))
    prompts = [
        "a red circle",
        "A  GREEN Triangle,   on the LEFT!",
        "don't draw zebras: 42 of them",
        "café crème on the left",
        "a red-green circle's background",
    ]
    for prompt in prompts:
        ids, truncated = tokenizer.encode([prompt])
        expected = reference(prompt)["input_ids"]
        assert ids[0, : len(expected)].tolist() == expected, prompt
        assert not truncated[0]


def test_every_given_word_is_one_token(tokenizer: Tokenizer) -> None:
    for word in ["red", "circle", "background", "triangle"]:
        assert len(tokenizer.tokens(word)) == 1, word
    assert len(tokenizer.tokens("zebra")) > 1  # unknown words fall back to smaller pieces


def test_encode_frames_the_text_and_pads_with_zero(tokenizer: Tokenizer) -> None:
    ids, truncated = tokenizer.encode(["a red circle", "green"])
    assert ids.shape == (2, 77) and ids.dtype == torch.long
    assert truncated == [False, False]
    assert ids[0, :5].tolist() == [tokenizer.sot_id, *tokenizer.tokens("a red circle"), tokenizer.eot_id]
    assert (ids[0, 5:] == PAD_ID).all() and (ids[1, 3:] == PAD_ID).all()
    # The end-of-text token holds the largest id, which is how the text encoder finds it.
    assert tokenizer.eot_id == tokenizer.vocab_size - 1


def test_too_long_prompts_are_truncated_keeping_the_end_of_text_token(tokenizer: Tokenizer) -> None:
    fits = " ".join(["red"] * 75)
    too_long = " ".join(["red"] * 76)
    ids, truncated = tokenizer.encode([fits, too_long, "a red circle"])
    assert truncated == [False, True, False]
    assert ids[0, -1] == tokenizer.eot_id and ids[1, -1] == tokenizer.eot_id
    assert torch.equal(ids[0], ids[1])


def test_save_and_from_folder_round_trip(tokenizer: Tokenizer, tmp_path: Path) -> None:
    tokenizer.save(tmp_path)
    loaded = Tokenizer.from_folder(tmp_path)
    prompts = ["a green triangle on the left", "zebra crossing"]
    assert torch.equal(loaded.encode(prompts)[0], tokenizer.encode(prompts)[0])
    (tmp_path / "merges.txt").unlink()
    with pytest.raises(FileNotFoundError, match=r"merges\.txt"):
        Tokenizer.from_folder(tmp_path)
