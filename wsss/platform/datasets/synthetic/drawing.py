"""Drawing one image of the built-in set from its seed: a cluttered background, distractors, the
chosen classes' objects, and the label map with a 255 band at object borders."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from wsss.platform.config import SyntheticConfig
from wsss.platform.datasets.synthetic.design import ClassDesign
from wsss.stages.labels import IGNORE_INDEX

# An object hidden below this share of its own area is dropped: its label would name
# something nobody can see.
MIN_VISIBLE_SHARE = 0.3


ACCESSORY_SHARE = 0.35


def _polygon(shape: str, cx: float, cy: float, rx: float, ry: float, angle: float) -> list:
    """Vertices of a shape centred at (cx, cy) with radii (rx, ry), rotated by `angle`."""
    if shape == "ellipse":
        t = np.linspace(0, 2 * np.pi, 40, endpoint=False)
        points = np.stack([np.cos(t), np.sin(t)], 1)
    elif shape in ("rectangle", "square"):
        points = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], float)
    elif shape == "triangle":
        points = np.array([[0, -1], [1, 1], [-1, 1]], float)
    elif shape == "diamond":
        points = np.array([[0, -1], [1, 0], [0, 1], [-1, 0]], float)
    elif shape == "hexagon":
        t = np.arange(6) * np.pi / 3
        points = np.stack([np.cos(t), np.sin(t)], 1)
    elif shape == "star":
        t = np.arange(10) * np.pi / 5 - np.pi / 2
        radius = np.where(np.arange(10) % 2 == 0, 1.0, 0.45)
        points = np.stack([np.cos(t) * radius, np.sin(t) * radius], 1)
    elif shape == "cross":
        a = 0.38
        points = np.array(
            [[-a, -1], [a, -1], [a, -a], [1, -a], [1, a], [a, a], [a, 1], [-a, 1], [-a, a],
             [-1, a], [-1, -a], [-a, -a]], float,
        )  # fmt: skip
    elif shape == "arch":
        t = np.linspace(np.pi, 2 * np.pi, 20)
        outer = np.stack([np.cos(t), np.sin(t) * 1.4 + 0.4], 1)
        inner = np.stack([np.cos(t[::-1]) * 0.45, np.sin(t[::-1]) * 0.6 + 0.4], 1)
        points = np.concatenate([outer, [[1, 1]], [[0.45, 1]], inner, [[-0.45, 1]], [[-1, 1]]])
    elif shape == "bar":
        points = np.array([[-1, -0.35], [1, -0.35], [1, 0.35], [-1, 0.35]], float)
    elif shape == "ring":
        t = np.linspace(0, 2 * np.pi, 24, endpoint=False)
        points = np.stack([np.cos(t), np.sin(t)], 1)
    elif shape == "blob":
        t = np.linspace(0, 2 * np.pi, 9, endpoint=False)
        radius = 0.6 + 0.4 * np.abs(np.sin(3 * t + angle))
        points = np.stack([np.cos(t) * radius, np.sin(t) * radius], 1)
    else:
        raise ValueError(f"unknown shape {shape!r}")
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    scaled = points * np.array([rx, ry]) @ rotation.T + np.array([cx, cy])
    return [tuple(p) for p in scaled]


def _shape_mask(shape: str, size: int, cx: float, cy: float, rx: float, ry: float, angle: float):
    canvas = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    if shape == "figure":
        # A standing figure: head, torso, two legs; `angle` only sways it slightly.
        head_r = rx * 0.45
        draw.ellipse([cx - head_r, cy - ry, cx + head_r, cy - ry + 2 * head_r], fill=1)
        top = cy - ry + 2 * head_r * 0.9
        draw.rounded_rectangle([cx - rx, top, cx + rx, cy + ry * 0.3], radius=rx * 0.3, fill=1)
        leg = rx * 0.38
        sway = math.sin(angle) * rx * 0.3
        draw.polygon(
            [(cx - rx * 0.9, cy + ry * 0.25), (cx - rx * 0.9 + leg, cy + ry * 0.25),
             (cx - rx * 0.5 + leg + sway, cy + ry), (cx - rx * 0.5 + sway, cy + ry)], fill=1,
        )  # fmt: skip
        draw.polygon(
            [(cx + rx * 0.9 - leg, cy + ry * 0.25), (cx + rx * 0.9, cy + ry * 0.25),
             (cx + rx * 0.5 - sway, cy + ry), (cx + rx * 0.5 - leg - sway, cy + ry)], fill=1,
        )  # fmt: skip
    else:
        draw.polygon(_polygon(shape, cx, cy, rx, ry, angle), fill=1)
        if shape == "ring":
            draw.ellipse([cx - rx * 0.5, cy - ry * 0.5, cx + rx * 0.5, cy + ry * 0.5], fill=0)
    return np.asarray(canvas, dtype=bool)


def _pattern(
    pattern: str,
    colours: Sequence[tuple[int, int, int]],
    size: int,
    rng: np.random.Generator,
    period: float,
) -> np.ndarray:
    """A [size, size, 3] float texture mixing two colours in a pattern with a random phase."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    a, b = (np.asarray(c, np.float32) for c in colours)
    if pattern == "solid":
        weight = np.zeros((size, size), np.float32)
    elif pattern == "stripes":
        theta = rng.uniform(0, np.pi)
        phase = rng.uniform(0, 2 * np.pi)
        weight = np.sin((x * np.cos(theta) + y * np.sin(theta)) * 2 * np.pi / period + phase) > 0
        weight = weight.astype(np.float32)
    elif pattern == "dots":
        ox, oy = rng.uniform(0, period, 2)
        dx = (x + ox) % period - period / 2
        dy = (y + oy) % period - period / 2
        weight = (dx**2 + dy**2 < (period * 0.3) ** 2).astype(np.float32)
    elif pattern == "noise":
        coarse = rng.random((max(2, int(size / period)),) * 2).astype(np.float32)
        weight = np.asarray(
            Image.fromarray(coarse).resize((size, size), Image.Resampling.BILINEAR), np.float32
        )
    else:
        raise ValueError(f"unknown pattern {pattern!r}")
    return a * (1 - weight[..., None]) + b * weight[..., None]


def _background(size: int, rng: np.random.Generator) -> np.ndarray:
    """Smooth colour field plus a few clutter strokes: a textured, cluttered scene."""
    coarse = rng.uniform(60, 200, (4, 4, 3)).astype(np.uint8)
    field = np.asarray(
        Image.fromarray(coarse).resize((size, size), Image.Resampling.BICUBIC), np.float32
    )
    grain = _pattern("noise", ((0, 0, 0), (40, 40, 40)), size, rng, period=size / 24)
    canvas = Image.fromarray(np.clip(field + grain - 20, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    for _ in range(int(rng.integers(2, 6))):
        points = [tuple(rng.uniform(0, size, 2)) for _ in range(2)]
        shade = tuple(int(v) for v in rng.integers(40, 220, 3))
        draw.line(points, fill=shade, width=int(rng.integers(1, max(2, size // 40))))
    return np.asarray(canvas, np.float32)


@dataclass
class _Placed:
    design: ClassDesign | None  # None: a distractor of no class
    body: np.ndarray
    part: np.ndarray
    body_colours: tuple[tuple[int, int, int], tuple[int, int, int]]
    part_pattern: str
    part_colour: tuple[int, int, int]


def _place_object(
    design: ClassDesign, size: int, rng: np.random.Generator, anchor: _Placed | None
) -> _Placed:
    if design.kind == "dominant":
        ry = rng.uniform(0.28, 0.42) * size
        rx = ry * rng.uniform(0.32, 0.4)
        cx, cy = rng.uniform(rx, size - rx), rng.uniform(ry, size - ry)
        angle = rng.uniform(-1, 1)
    elif design.kind == "accessory" and anchor is not None:
        # Accessories sit on the dominant object (sunglasses on a face, a microphone in hand).
        ys, xs = np.nonzero(anchor.body)
        pick = rng.integers(len(ys))
        cx, cy = float(xs[pick]), float(ys[pick])
        rx = rng.uniform(0.07, 0.1) * size
        ry = rx * rng.uniform(0.6, 1.0)
        angle = rng.uniform(0, np.pi)
    else:
        rx = rng.uniform(0.14, 0.25) * size
        ry = rx * rng.uniform(0.75, 1.3)
        cx, cy = rng.uniform(0.15, 0.85, 2) * size
        # Small tilts only: a square turned by 45 degrees would be a diamond, another class.
        angle = rng.uniform(-0.35, 0.35)
    body = _shape_mask(design.shape, size, cx, cy, rx, ry, angle)
    if design.kind == "accessory":
        part = body  # a small object is all evidence
    else:
        # The part sits at a class-specific spot of the body (its "face").
        spot = design.index * 2.399963  # golden angle: classes spread their spots around
        px = cx + math.cos(spot) * rx * 0.45
        py = cy + math.sin(spot) * ry * 0.45 if design.kind == "main" else cy - ry * 0.72
        radius = min(rx, ry) * (0.32 if design.kind == "main" else 0.3)
        part = body & _shape_mask("ellipse", size, px, py, radius, radius, 0.0)
    return _Placed(design, body, part, design.body_texture, design.part_pattern, design.part_colour)


def _place_distractor(
    designs: Sequence[ClassDesign], size: int, rng: np.random.Generator
) -> _Placed:
    """A body without a part (shape + texture alone), or a part on a shapeless blob."""
    mains = [d for d in designs if d.kind == "main"]
    template = mains[int(rng.integers(len(mains)))]
    if rng.random() < 0.5:
        placed = _place_object(template, size, rng, None)
        return _Placed(None, placed.body, np.zeros_like(placed.body), template.body_texture,
                       "solid", (0, 0, 0))  # fmt: skip
    rx = rng.uniform(0.06, 0.1) * size
    cx, cy = rng.uniform(0.1, 0.9, 2) * size
    blob = _shape_mask("blob", size, cx, cy, rx, rx, rng.uniform(0, np.pi))
    shade = tuple(int(v) for v in rng.integers(60, 200, 3))
    return _Placed(None, blob, blob, (shade, shade), template.part_pattern, template.part_colour)


def _choose_classes(
    designs: Sequence[ClassDesign], config: SyntheticConfig, rng: np.random.Generator
) -> list[ClassDesign]:
    mains = [d for d in designs if d.kind == "main"]
    dominant = next(d for d in designs if d.kind == "dominant")
    accessories = [d for d in designs if d.kind == "accessory"]
    weights = 1.0 / np.arange(1, len(mains) + 1) ** config.zipf_exponent
    weights /= weights.sum()

    def draw_mains(count: int) -> list[ClassDesign]:
        return [mains[i] for i in rng.choice(len(mains), size=count, p=weights)]

    if rng.random() >= config.dominant_share:
        return draw_mains(int(rng.integers(config.min_objects, config.max_objects + 1)))
    chosen = [dominant]
    if config.max_objects > 1 and rng.random() < config.dominant_cooccurrence:
        for _ in range(int(rng.integers(1, config.max_objects))):
            if accessories and rng.random() < ACCESSORY_SHARE:
                chosen.append(accessories[int(rng.integers(len(accessories)))])
            else:
                chosen.extend(draw_mains(1))
    return chosen


def _ignore_band(label_map: np.ndarray, width: int) -> np.ndarray:
    """Pixels within `width` of a change of label (VOC marks object borders 255)."""
    if width == 0:
        return np.zeros(label_map.shape, bool)
    border = ndimage.maximum_filter(label_map, size=3) != ndimage.minimum_filter(label_map, size=3)
    return ndimage.binary_dilation(border, iterations=width - 1) if width > 1 else border


@dataclass
class DrawnImage:
    image: np.ndarray  # [S, S, 3] uint8
    mask: np.ndarray  # [S, S] uint8, class indices, 255 at object borders
    labels: list[str]  # every visible class
    boxes: list[tuple[str, tuple[int, int, int, int]]]  # (class, (xmin, ymin, xmax, ymax))


def draw_image(
    designs: Sequence[ClassDesign], config: SyntheticConfig, rng: np.random.Generator
) -> DrawnImage:
    """Draw one scene: background, distractors, then objects back to front."""
    size = config.image_size
    chosen = _choose_classes(designs, config, rng)
    # The dominant object stands behind the rest; accessories go on top of it.
    chosen.sort(key=lambda d: {"dominant": 0, "main": 1, "accessory": 2}[d.kind])
    anchor = None
    objects: list[_Placed] = []
    for design in chosen:
        if design.kind == "accessory" and anchor is None:
            continue
        placed = _place_object(design, size, rng, anchor)
        if design.kind == "dominant":
            anchor = placed
        objects.append(placed)
    distractors = [
        _place_distractor(designs, size, rng)
        for _ in range(int(rng.integers(0, config.distractors + 1)))
    ]

    owner = np.full((size, size), -1, np.int32)
    for k, placed in enumerate(objects):
        owner[placed.body] = k
    visible = [
        k for k, p in enumerate(objects) if (owner == k).sum() >= MIN_VISIBLE_SHARE * p.body.sum()
    ]
    kept = [objects[k] for k in visible] or objects[-1:]

    canvas = _background(size, rng)
    for placed in [*distractors, *kept]:
        period = max(3.0, size / 16)
        body = _pattern("noise", placed.body_colours, size, rng, period=period)
        canvas[placed.body] = body[placed.body]
        colours = (placed.part_colour, tuple(int(c * 0.45) for c in placed.part_colour))
        part = _pattern(placed.part_pattern, colours, size, rng, period=max(3.0, size / 20))
        canvas[placed.part] = part[placed.part]
    label_map = np.zeros((size, size), np.uint8)
    for placed in kept:
        label_map[placed.body] = placed.design.index  # type: ignore[union-attr]
    noise = rng.normal(0, 6, canvas.shape)
    image = np.clip(canvas + noise, 0, 255).astype(np.uint8)

    present = sorted({int(v) for v in np.unique(label_map)} - {0})
    by_index = {d.index: d for d in designs}
    boxes = []
    for index in present:
        ys, xs = np.nonzero(label_map == index)
        box = (int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max()))
        boxes.append((by_index[index].name, box))
    mask = label_map.copy()
    mask[_ignore_band(label_map, config.ignore_border)] = IGNORE_INDEX
    return DrawnImage(image, mask, [by_index[i].name for i in present], boxes)
