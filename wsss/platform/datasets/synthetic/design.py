"""How the built-in set's classes look: a shape and a part each, shared pairwise so that neither
alone names a class, in Zipf rank order, then the dominant class and its accessories."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

from wsss.platform.config import SyntheticConfig
from wsss.platform.datasets.manifest import (
    BACKGROUND,
)

MAIN_NAMES = (
    "dog", "bird", "cat", "car", "horse", "boat", "chair", "bottle", "sheep", "cow",
    "train", "airplane", "bus", "bicycle", "lamp", "clock", "kite", "cup", "bench", "fish",
)  # fmt: skip


ACCESSORY_NAMES = ("sunglasses", "microphone", "hat", "tie", "watch", "scarf", "glove", "badge")


SHAPES = ("ellipse", "rectangle", "triangle", "diamond", "hexagon", "star", "cross", "arch")


PART_COLOURS = (
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
    (145, 30, 180), (70, 240, 240), (240, 50, 230), (0, 0, 128), (128, 0, 0),
)  # fmt: skip


PART_PATTERNS = ("solid", "stripes", "dots")


BODY_TEXTURES = (
    ((150, 120, 90), (110, 85, 60)),  # fur
    ((120, 140, 120), (90, 105, 95)),  # scales
    ((140, 145, 160), (105, 110, 125)),  # metal
)


PERSON_TEXTURE = ((200, 160, 130), (70, 80, 140))  # skin over clothes


ACCESSORY_STYLE_SEED = 7919


@dataclass(frozen=True)
class ClassDesign:
    """How one class looks. Index is its mask value (0 is background)."""

    index: int
    name: str
    kind: Literal["main", "dominant", "accessory"]
    shape: str
    part_colour: tuple[int, int, int]
    part_pattern: str
    body_texture: tuple[tuple[int, int, int], tuple[int, int, int]]


def design_classes(config: SyntheticConfig) -> list[ClassDesign]:
    """The class designs: main classes in Zipf rank order, then the dominant, then accessories.

    Main class i gets shape i mod S and part p = (i // S + i mod S) mod P, S about sqrt(#main),
    part p being a colour and a pattern:
    two classes with one shape never share a part, and classes that share a part differ in
    shape, so a classifier must learn both cues.
    """
    num_main = config.num_classes - 1 - config.accessory_classes
    num_shapes = min(len(SHAPES), math.ceil(math.sqrt(num_main)))
    num_parts = math.ceil(num_main / num_shapes)
    designs = []
    for i in range(num_main):
        part = (i // num_shapes + i % num_shapes) % num_parts
        colour, row = part % len(PART_COLOURS), part // len(PART_COLOURS)
        name = MAIN_NAMES[i] if i < len(MAIN_NAMES) else f"class_{i:03d}"
        designs.append(
            ClassDesign(
                index=i + 1,
                name=name,
                kind="main",
                shape=SHAPES[i % num_shapes],
                part_colour=PART_COLOURS[colour],
                part_pattern=PART_PATTERNS[(row + colour) % len(PART_PATTERNS)],
                body_texture=BODY_TEXTURES[i % len(BODY_TEXTURES)],
            )
        )
    designs.append(
        ClassDesign(
            index=num_main + 1,
            name=config.dominant_class,
            kind="dominant",
            shape="figure",
            part_colour=(40, 30, 25),
            part_pattern="solid",
            body_texture=PERSON_TEXTURE,
        )
    )
    style = np.random.default_rng(ACCESSORY_STYLE_SEED)
    for j in range(config.accessory_classes):
        base = ACCESSORY_NAMES[j % len(ACCESSORY_NAMES)]
        name = base if j < len(ACCESSORY_NAMES) else f"{base}_{j // len(ACCESSORY_NAMES)}"
        colour = tuple(int(c) for c in style.integers(0, 256, size=3))
        designs.append(
            ClassDesign(
                index=num_main + 2 + j,
                name=name,
                kind="accessory",
                shape=("bar", "ring", "square")[j % 3],
                part_colour=colour,  # type: ignore[arg-type]
                part_pattern=PART_PATTERNS[j % len(PART_PATTERNS)],
                body_texture=BODY_TEXTURES[j % len(BODY_TEXTURES)],
            )
        )
    names = [d.name for d in designs]
    if len(set(names)) != len(names):
        raise ValueError(
            f"data.synthetic.dominant_class {config.dominant_class!r} collides with a built-in "
            "class name; choose another"
        )
    return designs


def class_names(config: SyntheticConfig) -> list[str]:
    """The class list, background first, in mask-index order."""
    return [BACKGROUND, *(d.name for d in design_classes(config))]
