"""The built-in synthetic dataset: WSSS made hard in the ways the LID data is hard.

What it builds in, and why:
- Each object class is a *shape* (its body outline) plus a *part* (a small distinctive patch
  whose colour and pattern identify it). Classes share shapes and parts pairwise, so neither
  alone names the class, and bodies are filled with a few textures every class shares: the
  discriminative evidence sits in the part and the outline, so raw CAMs under-cover bodies as
  they do on real photos.
- Cluttered textured backgrounds with distractors of no class: bodies without a part, and
  parts on shapeless blobs, so that neither cue alone is enough.
- Zipf-distributed class frequencies (the top classes carry about half the labels).
- A dominant class (`person` by default) that co-occurs with other classes most of the time,
  carries small "accessory" classes on top of it, and whose image-level label is dropped from
  a share of the training images that contain it.
- Train images have image-level labels only; val and test have complete labels and palette
  masks with a 255 band at object borders (as VOC). The train masks and true labels are kept
  apart in `oracle/` for upper-bound experiments; the weak pipeline never reads them.

The set is written in the PASCAL VOC 2012 layout plus `classes.txt`, and imported with the VOC
adapter, so the built-in set runs through the same code as real data. Every image is drawn from
its own seed (dataset seed, split, index), so the set is identical whatever the worker count.
With `awkward_files` on, the first train and val images are stored the ways users' files come
(grey, RGBA, 16-bit, CMYK, EXIF-turned, 1x1, 10000x200), their masks resized with them, so
a run meets them in every step.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from xml.sax.saxutils import escape

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from wsss.platform.config import SyntheticConfig
from wsss.platform.datasets.adapters import import_dataset
from wsss.platform.datasets.images import IGNORE_INDEX, write_palette_png
from wsss.platform.datasets.manifest import (
    BACKGROUND,
    ORACLE_LABELS,
    ORACLE_MASK_DIR,
    SPLITS,
    write_atomic,
)
from wsss.platform.datasets.stats import dataset_stats

SUMMARY_FILE = "synth_summary.json"
# The kinds of image file users' collections hold besides RGB JPEGs (`awkward_files`).
AWKWARD_KINDS = ("grey", "rgba", "sixteen_bit", "cmyk", "exif_turned", "one_pixel", "wide")
AWKWARD_SIZES = {"one_pixel": (1, 1), "wide": (10000, 200)}  # (width, height)
EXIF_ORIENTATION = 0x0112

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
# An object hidden below this share of its own area is dropped: its label would name
# something nobody can see.
MIN_VISIBLE_SHARE = 0.3
ACCESSORY_SHARE = 0.35


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


# --- drawing -------------------------------------------------------------------------------


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


# --- writing the VOC layout ----------------------------------------------------------------


def _annotation_xml(image_id: str, size: int, boxes: Sequence[tuple[str, tuple]]) -> str:
    objects = "".join(
        f"<object><name>{escape(name)}</name><difficult>0</difficult><bndbox>"
        f"<xmin>{x0 + 1}</xmin><ymin>{y0 + 1}</ymin><xmax>{x1 + 1}</xmax><ymax>{y1 + 1}</ymax>"
        "</bndbox></object>"
        for name, (x0, y0, x1, y1) in boxes
    )
    return (
        f"<annotation><folder>WSSS-SYNTH</folder><filename>{image_id}.jpg</filename>"
        f"<size><width>{size}</width><height>{size}</height><depth>3</depth></size>"
        f"{objects}</annotation>\n"
    )


def awkward_kind(config: SyntheticConfig, split: str, index: int) -> str | None:
    """How image `index` of `split` is stored when `config.awkward_files` is on, else None.
    The wide file stays out of val, whose pixel-pooled mIoU its pixels would outweigh (they
    do outweigh the rest of train's in the train rows: a set for tests, not for scores)."""
    if not config.awkward_files or split == "test":
        return None
    kinds = AWKWARD_KINDS if split == "train" else AWKWARD_KINDS[:-1]
    return kinds[index] if index < len(kinds) else None


def _write_image(path: Path, image: np.ndarray, kind: str | None) -> None:
    """`image` at `path` as a JPEG, or as the awkward `kind` of file (PNG data under the VOC
    layout's .jpg name where a JPEG cannot hold it, as in collections scraped from the web)."""
    picture = Image.fromarray(image)
    if kind is None:
        picture.save(path, format="JPEG", quality=92)
    elif kind == "grey":
        picture.convert("L").save(path, format="JPEG", quality=92)
    elif kind == "rgba":
        picture.convert("RGBA").save(path, format="PNG")
    elif kind == "sixteen_bit":
        grey = np.asarray(picture.convert("L"), np.uint16) * 257
        Image.fromarray(grey).save(path, format="PNG")
    elif kind == "cmyk":
        picture.convert("CMYK").save(path, format="JPEG", quality=92)
    elif kind == "exif_turned":
        # Stored turned a quarter to the left; orientation 6 tells a viewer to turn it back.
        turned = picture.transpose(Image.Transpose.ROTATE_90)
        exif = turned.getexif()
        exif[EXIF_ORIENTATION] = 6
        turned.save(path, format="JPEG", quality=92, exif=exif)
    else:
        picture.resize(AWKWARD_SIZES[kind], Image.Resampling.BILINEAR).save(path, format="PNG")


def _image_seed(seed: int, split: str, index: int) -> np.random.SeedSequence:
    return np.random.SeedSequence([seed, SPLITS.index(split), index])


def _render_chunk(args: tuple[Path, SyntheticConfig, int, str, list[int]]) -> list[dict]:
    out, config, seed, split, indices = args
    designs = design_classes(config)
    dominant = config.dominant_class
    # Within the images that show the dominant class, the label can only go missing where
    # another label remains (an empty label set is no training example); raise the drop
    # probability there so the overall share matches the configured rate.
    drop_probability = min(1.0, config.missing_label_rate / max(config.dominant_cooccurrence, 1e-6))
    records = []
    for index in indices:
        rng = np.random.default_rng(_image_seed(seed, split, index))
        drawn = draw_image(designs, config, rng)
        image_id = f"{split}_{index:06d}"
        kind = awkward_kind(config, split, index)
        _write_image(out / "JPEGImages" / f"{image_id}.jpg", drawn.image, kind)
        mask = drawn.mask
        if kind in AWKWARD_SIZES:
            resized = Image.fromarray(mask).resize(AWKWARD_SIZES[kind], Image.Resampling.NEAREST)
            mask = np.asarray(resized)
        given = list(drawn.labels)
        boxes = drawn.boxes
        if (
            split == "train"
            and dominant in given
            and len(given) > 1
            and rng.random() < drop_probability
        ):
            given.remove(dominant)
            boxes = [b for b in boxes if b[0] != dominant]
        (out / "Annotations" / f"{image_id}.xml").write_text(
            _annotation_xml(image_id, config.image_size, boxes)
        )
        mask_dir = out / ORACLE_MASK_DIR if split == "train" else out / ("SegmentationClass")
        write_palette_png(mask_dir / f"{image_id}.png", mask)
        labels = drawn.labels
        if kind in AWKWARD_SIZES:
            present = set(np.unique(mask).tolist()) - {0, IGNORE_INDEX}
            labels = [d.name for d in designs if d.name in labels and d.index in present] or labels
        records.append({"id": image_id, "split": split, "labels": labels})
    return records


def generate(out: Path, config: SyntheticConfig, seed: int = 0) -> None:
    """Write the synthetic set in the VOC layout under `out`.

    Layout: JPEGImages/, Annotations/ (image-level labels as VOC XML objects; the dominant
    class dropped where its label is missing), SegmentationClass/ (val, test),
    ImageSets/Segmentation/{train,val,test}.txt, classes.txt, oracle/ (train masks and true
    labels).
    """
    out = Path(out)
    for folder in ("JPEGImages", "Annotations", "SegmentationClass", "ImageSets/Segmentation"):
        (out / folder).mkdir(parents=True, exist_ok=True)
    (out / ORACLE_MASK_DIR).mkdir(parents=True, exist_ok=True)
    classes = class_names(config)
    counts = {"train": config.train_images, "val": config.val_images, "test": config.test_images}
    chunk = 32
    jobs = [
        (out, config, seed, split, list(range(start, min(start + chunk, n))))
        for split, n in counts.items()
        for start in range(0, n, chunk)
    ]
    if config.workers > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(max_workers=config.workers) as pool:
            records = [r for part in pool.map(_render_chunk, jobs) for r in part]
    else:
        records = [r for job in jobs for r in _render_chunk(job)]

    for split in SPLITS:
        ids = [r["id"] for r in records if r["split"] == split]
        (out / "ImageSets/Segmentation" / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))
    (out / "classes.txt").write_text("".join(f"{c}\n" for c in classes))
    oracle = {r["id"]: r["labels"] for r in records if r["split"] == "train"}
    (out / ORACLE_LABELS).write_text(json.dumps(oracle))


def build_synthetic_dataset(out: Path, config: SyntheticConfig, seed: int = 0) -> dict:
    """Generate the set under `out`, import it there as a dataset folder (the same checks as
    any real dataset's), and write and return its statistics (`synth_summary.json`)."""
    generate(out, config, seed)
    import_dataset("synthetic", out, out, name=f"synthetic-{seed}", workers=config.workers)
    summary = dataset_stats(out, config.dominant_class)
    write_atomic(out / SUMMARY_FILE, json.dumps(summary, indent=2) + "\n")
    return summary
