"""The prompt reader: the scene a prompt describes, read by a small transformer of the checkpoint's own, so
that the pipeline can draw it from the caption wording the model draws best.

A checkpoint trained on a closed world (the shapes of SHAPES.md) draws its own caption templates far
better than what people type. DALL·E 3 answers the same gap by rewriting prompts before drawing them
(Betker et al. 2023), and the OpenAI Images API returns the rewrite as `revised_prompt`; here the rewrite
is a reading of the prompt's facts, written back as the checkpoint's canonical caption.

The reader points rather than names. Colour and kind words reach it as two anonymous markers (COLOUR,
KIND), and it says which of the prompt's words is the background's colour, and each shape's colour and
kind; the reading copies those words. So it cannot learn which colours go with which kinds, only where
a phrase puts them, and a combination that no training caption held reads like any other (a reader that
saw the words themselves learnt the combinations: after 500 steps it read "a small purple circle, blue
background", a held-out triple, as a blue circle on purple, a trained one). Sizes and positions are
classes of their own.

Input: the prompt's tokens `[B, L]` (`encode`). Three learned slot tokens go in front, and a bidirectional
transformer (no causal mask: "a circle that is red" binds "red" to "circle" only after both are read)
hands each slot's output state to its heads:

    slot 0, the background: a pointer at a COLOUR word (or NONE: not said)
    slots 1 and 2, a shape:  pointers at its KIND word (or NONE: no such shape) and its COLOUR word;
                             size and position classes (or NONE: not said)

A one-shape prompt has slot 2's kind NONE. Which shape is slot 1 is the reader's choice (training scores
the better of the two orders). A reading is used only when every fact is at least `confidence` likely and
the facts make a scene the world allows; otherwise the prompt is drawn as it was given.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from models.clip import Transformer
from models.config import ReaderConfig
from models.nn import LayerNorm
from models.tokenizer import Tokenizer

NONE = 0  # index 0 of every fact: not said (for a shape's kind: no such shape); words start at 1
SLOTS = 3  # background, first shape, second shape
POINTERS = ("background", "kind", "colour")  # facts read as a pointer at a word
CLASSES = ("size", "position")  # facts read as a class
# Two shapes sit on opposite sides of the canvas (SHAPES.md); a pair's positions must say so.
OPPOSITE = {"left": "right", "right": "left", "top": "bottom", "bottom": "top"}
# The canonical caption's position phrases: the first of each in the training templates.
POSITION_PHRASES = {
    "center": "in the center",
    "left": "on the left",
    "right": "on the right",
    "top": "at the top",
    "bottom": "at the bottom",
}


@dataclass(frozen=True)
class ShapeReading:
    kind: str
    colour: str
    size: str | None = None
    position: str | None = None


@dataclass(frozen=True)
class SceneReading:
    shapes: tuple[ShapeReading, ...]
    background: str | None = None


@dataclass(frozen=True)
class Encoded:
    """Prompts as the reader sees them: ids `[B, L]` and, per row, the colour or kind each position names
    (None elsewhere)."""

    ids: torch.Tensor
    words: list[list[str | None]]


class PromptReader(nn.Module):
    def __init__(self, config: ReaderConfig) -> None:
        super().__init__()
        self.config = config
        width = config.width
        # The tokenizer's ids and three more: the COLOUR and KIND markers and padding (CLIP pads with id 0,
        # which is also a byte's).
        self.token_embedding = nn.Embedding(config.vocab_size + 3, width)
        self.positional_embedding = nn.Parameter(0.01 * torch.randn(SLOTS + config.context_length, width))
        self.slots = nn.Parameter(0.02 * torch.randn(SLOTS, width))
        self.transformer = Transformer(width, config.layers, config.heads, 4 * width, "gelu")
        self.ln_final = LayerNorm(width)
        # Pointers: a query (from the slot's state) per pointer against the word keys, and a NONE logit.
        self.queries = nn.ModuleDict({name: nn.Linear(width, width) for name in POINTERS})
        self.keys = nn.Linear(width, width)
        self.nones = nn.ModuleDict({name: nn.Linear(width, 1) for name in POINTERS})
        # Classes, shared by both shape slots: [NONE, *names].
        self.classes = nn.ModuleDict({name: nn.Linear(width, 1 + len(self.names(name))) for name in CLASSES})

    @property
    def colour_marker(self) -> int:
        return self.config.vocab_size

    @property
    def kind_marker(self) -> int:
        return self.config.vocab_size + 1

    @property
    def padding(self) -> int:
        return self.config.vocab_size + 2

    def names(self, fact: str) -> tuple[str, ...]:
        return getattr(self.config, {"size": "sizes", "position": "positions"}[fact])

    def word(self, piece: str) -> tuple[str, int] | None:
        """The colour or kind a word names ("circles": circle), with its marker; None for other words."""
        if piece in self.config.colours:
            return piece, self.colour_marker
        kind = piece[:-1] if piece.endswith("s") and piece[:-1] in self.config.kinds else piece
        return (kind, self.kind_marker) if kind in self.config.kinds else None

    def encode(self, tokenizer: Tokenizer, prompts: list[str]) -> Encoded:
        """`[SOT, tokens..., EOT, padding...]` as CLIP's, with each colour and kind word one marker."""
        length = self.config.context_length
        ids = torch.full((len(prompts), length), self.padding, dtype=torch.long)
        words: list[list[str | None]] = []
        for row, prompt in enumerate(prompts):
            sequence, named = [tokenizer.sot_id], [None]
            for piece, piece_ids in tokenizer.pieces(prompt):
                known = self.word(piece)
                sequence += piece_ids if known is None else [known[1]]
                named += [None] * len(piece_ids) if known is None else [known[0]]
            sequence, named = [*sequence[: length - 1], tokenizer.eot_id], [*named[: length - 1], None]
            ids[row, : len(sequence)] = torch.tensor(sequence)
            words.append(named + [None] * (length - len(named)))
        return Encoded(ids, words)

    def forward(self, ids: torch.Tensor) -> dict[str, torch.Tensor]:
        """ids `[B, L]` (`encode`) → logits: "background" `[B, 1 + L]`; "kind", "colour" `[B, 2, 1 + L]`
        (NONE, then a pointer at each position); "size", "position" `[B, 2, 1 + names]`."""
        b = ids.shape[0]
        x = torch.cat([self.slots.expand(b, -1, -1), self.token_embedding(ids)], dim=1)
        x = x + self.positional_embedding[: x.shape[1]]
        visible = torch.cat([ids.new_ones(b, SLOTS, dtype=torch.bool), ids != self.padding], dim=1)
        x = self.ln_final(self.transformer(x, key_padding_mask=visible))
        slots, tokens = x[:, :SLOTS], x[:, SLOTS:]  # [B, 3, W], [B, L, W]
        keys, scale = self.keys(tokens), self.config.width**-0.5
        colour_at, kind_at = ids == self.colour_marker, ids == self.kind_marker
        logits = {}
        for name, rows, at in (
            ("background", slice(0, 1), colour_at),
            ("kind", slice(1, SLOTS), kind_at),
            ("colour", slice(1, SLOTS), colour_at),
        ):
            state = slots[:, rows]  # [B, S, W]
            pointer = self.queries[name](state) @ keys.transpose(1, 2) * scale  # [B, S, L]
            pointer = pointer.masked_fill(~at[:, None], float("-inf"))
            logits[name] = torch.cat([self.nones[name](state), pointer], dim=-1)
        logits["background"] = logits["background"][:, 0]
        for name, head in self.classes.items():
            logits[name] = head(slots[:, 1:])
        return logits

    @torch.inference_mode()
    def read(self, tokenizer: Tokenizer, prompts: list[str]) -> list[SceneReading | None]:
        """Each prompt's scene, or None where the reading is unsure or not a scene of this world."""
        encoded = self.encode(tokenizer, prompts)
        logits = self(encoded.ids.to(self.slots.device))
        probabilities = {name: value.float().softmax(dim=-1).cpu() for name, value in logits.items()}
        return [self._reading(probabilities, encoded.words[row], row) for row in range(len(prompts))]

    def _reading(
        self, probabilities: dict[str, torch.Tensor], words: list[str | None], row: int
    ) -> SceneReading | None:
        sure = True

        def fact(p: torch.Tensor, names: list[str | None] | tuple[str, ...]) -> str | None:
            nonlocal sure
            best = int(p.argmax())
            sure = sure and float(p[best]) >= self.config.confidence
            return None if best == NONE else names[best - 1]

        background = fact(probabilities["background"][row], words)
        shapes = []
        for slot in range(SLOTS - 1):
            kind = fact(probabilities["kind"][row, slot], words)
            if kind is None:
                continue
            colour = fact(probabilities["colour"][row, slot], words)
            size, position = (fact(probabilities[name][row, slot], self.names(name)) for name in CLASSES)
            shapes.append(ShapeReading(kind, colour, size, position))  # type: ignore[arg-type]
        reading = SceneReading(tuple(shapes), background)
        return reading if sure and allowed(reading, self.config) else None


def allowed(reading: SceneReading, config: ReaderConfig) -> bool:
    """Whether the world draws this scene: one or two shapes, each a kind with a colour of its own (never
    the background's), and a pair's positions, where said, on opposite sides."""
    shapes = reading.shapes
    if not 1 <= len(shapes) <= 2:
        return False
    if any(s.kind not in config.kinds or s.colour not in config.colours for s in shapes):
        return False  # a pointer at the wrong kind of word
    colours = [s.colour for s in shapes]
    if len(set(colours)) != len(colours) or reading.background in colours:
        return False
    if reading.background is not None and reading.background not in config.colours:
        return False
    if len(shapes) == 2:
        a, b = (s.position for s in shapes)
        if any(p is not None and p not in OPPOSITE for p in (a, b)) or (a and b and OPPOSITE[a] != b):
            return False
    return True


def canonical_caption(reading: SceneReading) -> str:
    """The reading in the caption templates the checkpoint trained on longest: "a large red circle on the
    left and a blue square on the right on a white background"."""
    body = " and ".join(_shape_phrase(shape) for shape in reading.shapes)
    bg = reading.background
    return body if bg is None else f"{body} on {_article(bg)} {bg} background"


def _shape_phrase(shape: ShapeReading) -> str:
    words = " ".join(w for w in (shape.size, shape.colour, shape.kind) if w)
    phrase = f"{_article(words)} {words}"
    return phrase if shape.position is None else f"{phrase} {POSITION_PHRASES[shape.position]}"


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def revise(reader: PromptReader | None, tokenizer: Tokenizer, prompts: list[str]) -> list[str | None]:
    """Per prompt, the canonical caption to draw instead, or None: drawn as given (no reader, an unsure
    reading, or the prompt is that caption already)."""
    if reader is None:
        return [None] * len(prompts)
    captions = [None if r is None else canonical_caption(r) for r in reader.read(tokenizer, prompts)]
    return [None if caption == prompt else caption for caption, prompt in zip(captions, prompts, strict=True)]
