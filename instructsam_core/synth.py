"""A procedurally generated data set in the released formats: coloured shapes and instructions.

Why: the real data sets are tens of GB and cannot be fetched here, but training, evaluation,
the tests and the ROS demo all need images with instance masks and instructions of every kind
(category, referring with attributes / relations / ordinals, reasoning, multi-instance,
no target). A tiny model must be able to learn it in minutes on a CPU, so the vocabulary is
small (4 colours x 4 shapes), colours are solid and distinct, objects never overlap and are at
least ~13 px across their half-extent.

Output of `generate(out_dir, n, seed, split)`:
- `images/<split>_<index>.png` (RGB, sizes 160..320 px per side, not square in general);
- `train.json`: training records (reference-design.md "Data formats"). Per image two records:
  one `type: "instseg"` record with category phrases (present and absent), and one
  `type: "referring"` record with referring phrases and reasoning sentences (`near_miss_phrases`
  adds hard negatives to the instseg record from a random stream of its own, so the benchmark
  queries of the same images do not change). Each annotation is
  `{type: "phrase"|"sentence", text, category, ann_type: "mask", ann: [JSON-encoded COCO RLE per
  instance] | null, answer}` where `answer` is the phrase the model answers with (the text
  itself for phrases, the category for sentences);
- `inst2seg.json`: benchmark records `{image, height, width, annotation: [{text, mask?}]}` with
  `mask` a list of COCO RLEs (one per instance), left out for no-target queries;
- `scenes.json`: the objects of every image (shape, colour, box, area), for demos and debugging.

Everything is a pure function of (seed, split): re-running writes byte-identical files.
Different splits draw from independent random streams, so `--split val` gives held-out data.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
from PIL import Image

from instructsam_core.errors import UserError
from instructsam_core.masks import encode_mask
from instructsam_core.tokens import normalize_phrase

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (215, 40, 40),
    "green": (40, 165, 60),
    "blue": (45, 85, 215),
    "yellow": (235, 200, 35),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "ring")
PLURAL = {shape: shape + "s" for shape in SHAPES}
SPLITS = {"train": 0, "val": 1, "test": 2}

# Reasoning-style sentences: each names a shape or a colour by what it is like, so the model
# has to map the sentence to a category phrase (the answer), as in ReasonSeg-style data.
SHAPE_REASONS: dict[str, tuple[str, ...]] = {
    "circle": ("which shapes could roll like a wheel?", "what could you use as a wheel?"),
    "square": ("which shapes look like a window?", "what has four equal sides?"),
    "triangle": ("which shapes look like a warning sign?", "what looks like a slice of pizza?"),
    "ring": ("what could you wear on a finger?", "which shapes look like a donut?"),
}
COLOR_REASONS: dict[str, tuple[str, ...]] = {
    "red": ("which shapes have the colour of a ripe tomato?",),
    "green": ("which shapes have the colour of fresh grass?",),
    "blue": ("which shapes have the colour of a clear sky?",),
    "yellow": ("which shapes have the colour of a banana?",),
}
ORDINALS = ("first", "second", "third")
# direction word -> (axis key, reverse order?) ; "from the left" sorts by x ascending.
ORDER_FROM = {"left": ("x", False), "right": ("x", True), "top": ("y", False), "bottom": ("y", True)}
EXTREMES = {"leftmost": ("x", False), "rightmost": ("x", True), "topmost": ("y", False), "bottommost": ("y", True)}
RELATIONS = ("left of", "right of", "above", "below")

INST2SEG_PROMPT_SUFFIX = " Please output the segmentation mask."


@dataclass
class SceneObject:
    """One painted shape; `mask` is exactly the pixels painted with its colour."""

    shape: str
    color: str
    cx: float
    cy: float
    size: float  # half-extent in pixels
    mask: np.ndarray

    @property
    def area(self) -> int:
        return int(self.mask.sum())

    def box(self) -> tuple[int, int, int, int]:
        rows = np.flatnonzero(self.mask.any(axis=1))
        cols = np.flatnonzero(self.mask.any(axis=0))
        return int(cols[0]), int(rows[0]), int(cols[-1] + 1), int(rows[-1] + 1)


@dataclass
class Scene:
    height: int
    width: int
    image: np.ndarray  # uint8 [H, W, 3]
    objects: list[SceneObject]


@dataclass(frozen=True)
class Query:
    """An instruction about a scene and the objects it means (empty = no target)."""

    text: str
    category: str  # the phrase the model answers with
    kind: str  # "category" | "referring" | "reasoning"
    ann_type: str  # "phrase" | "sentence"
    targets: tuple[int, ...]


# ----------------------------------------------------------------------------- drawing


def _shape_mask(shape: str, cx: float, cy: float, s: float, height: int, width: int) -> np.ndarray:
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    xs += 0.5
    ys += 0.5
    dx, dy = xs - cx, ys - cy
    if shape == "circle":
        return dx * dx + dy * dy <= s * s
    if shape == "ring":
        d2 = dx * dx + dy * dy
        return (d2 <= s * s) & (d2 >= (0.5 * s) ** 2)
    if shape == "square":
        half = 0.85 * s
        return (np.abs(dx) <= half) & (np.abs(dy) <= half)
    if shape == "triangle":
        # Upright triangle: apex at (cx, cy - s), base at y = cy + 0.8 s, base half-width s.
        top, bottom = -s, 0.8 * s
        t = (dy - top) / (bottom - top)  # 0 at the apex, 1 at the base
        return (dy <= bottom) & (t >= 0) & (np.abs(dx) <= t * s)
    raise ValueError(f"unknown shape {shape}")


def make_scene(rng: np.random.Generator) -> Scene:
    """Draw one image: 1-5 non-overlapping shapes on a plain or noisy background."""
    height = int(rng.integers(160, 321))
    width = int(rng.integers(160, 321))
    short = min(height, width)
    if rng.random() < 0.5:
        base = rng.integers(200, 251, size=3)
        image = np.broadcast_to(base, (height, width, 3)).astype(np.float64)
    else:
        base = rng.integers(170, 231, size=3)
        image = base + rng.normal(0.0, 10.0, size=(height, width, 3))
    count = int(rng.choice([1, 2, 3, 4, 5], p=[0.12, 0.22, 0.26, 0.22, 0.18]))
    objects: list[SceneObject] = []
    placed: list[tuple[float, float, float]] = []
    for _ in range(count):
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
        color = list(COLORS)[int(rng.integers(len(COLORS)))]
        for _attempt in range(40):
            s = float(rng.uniform(0.085, 0.17) * short)
            cx = float(rng.uniform(s + 2, width - s - 2))
            cy = float(rng.uniform(s + 2, height - s - 2))
            if all((cx - x) ** 2 + (cy - y) ** 2 >= (1.2 * (s + r) + 3) ** 2 for x, y, r in placed):
                break
        else:
            continue  # no room left: the scene keeps fewer objects
        mask = _shape_mask(shape, cx, cy, s, height, width)
        if mask.sum() < 40:
            continue
        placed.append((cx, cy, s))
        objects.append(SceneObject(shape, color, cx, cy, s, mask))
        jitter = rng.integers(-12, 13)
        image[mask] = np.clip(np.array(COLORS[color], dtype=np.float64) + jitter, 0, 255)
    return Scene(height, width, np.clip(np.rint(image), 0, 255).astype(np.uint8), objects)


# ----------------------------------------------------------------------------- instructions


def _key(obj: SceneObject, axis: str) -> float:
    return obj.cx if axis == "x" else obj.cy


def _separated(values: list[float], gap: float) -> bool:
    ordered = sorted(values)
    return all(b - a >= gap for a, b in zip(ordered, ordered[1:]))


def _category_queries(scene: Scene) -> tuple[list[Query], list[Query]]:
    """Category phrases ('red circles', 'triangles', 'blue shapes'), present and absent."""
    present, absent = [], []
    objs = scene.objects
    for color in COLORS:
        for shape in SHAPES:
            targets = tuple(i for i, o in enumerate(objs) if o.color == color and o.shape == shape)
            q = Query(f"{color} {PLURAL[shape]}", f"{color} {PLURAL[shape]}", "category", "phrase", targets)
            (present if targets else absent).append(q)
    for shape in SHAPES:
        targets = tuple(i for i, o in enumerate(objs) if o.shape == shape)
        q = Query(PLURAL[shape], PLURAL[shape], "category", "phrase", targets)
        (present if targets else absent).append(q)
    for color in COLORS:
        targets = tuple(i for i, o in enumerate(objs) if o.color == color)
        q = Query(f"{color} shapes", f"{color} shapes", "category", "phrase", targets)
        (present if targets else absent).append(q)
    return present, absent


def _referring_queries(scene: Scene) -> tuple[list[Query], list[Query]]:
    """Referring phrases with one target: attributes, superlatives, ordinals, relations."""
    objs = scene.objects
    short = min(scene.height, scene.width)
    gap = 0.06 * short
    found: list[Query] = []
    absent: list[Query] = []

    def add(text: str, target: int) -> None:
        found.append(Query(text, text, "referring", "phrase", (target,)))

    # Groups a referring expression can pick from: "circle" (any colour), "red circle", "red shape".
    groups: list[tuple[str, list[int]]] = []
    for shape in SHAPES:
        groups.append((shape, [i for i, o in enumerate(objs) if o.shape == shape]))
        for color in COLORS:
            members = [i for i, o in enumerate(objs) if o.shape == shape and o.color == color]
            groups.append((f"{color} {shape}", members))
            if not members and any(o.shape == shape for o in objs):
                absent.append(Query(f"the {color} {shape}", f"the {color} {shape}", "referring", "phrase", ()))
    for color in COLORS:
        groups.append((f"{color} shape", [i for i, o in enumerate(objs) if o.color == color]))

    for noun, members in groups:
        if len(members) == 1 and " " in noun and not noun.endswith("shape"):
            add(f"the {noun}", members[0])
        if len(members) >= 2:
            areas = sorted(((objs[i].area, i) for i in members), reverse=True)
            if areas[0][0] >= 1.3 * areas[1][0]:
                add(f"the largest {noun}", areas[0][1])
            if areas[-2][0] >= 1.3 * areas[-1][0]:
                add(f"the smallest {noun}", areas[-1][1])
            for word, (axis, reverse) in EXTREMES.items():
                if _separated([_key(objs[i], axis) for i in members], gap):
                    ordered = sorted(members, key=lambda i: _key(objs[i], axis), reverse=reverse)
                    add(f"the {word} {noun}", ordered[0])
            for side, (axis, reverse) in ORDER_FROM.items():
                if len(members) >= 2 and _separated([_key(objs[i], axis) for i in members], gap):
                    ordered = sorted(members, key=lambda i: _key(objs[i], axis), reverse=reverse)
                    for rank in range(1, min(len(ordered), len(ORDINALS))):
                        add(f"the {ORDINALS[rank]} {noun} from the {side}", ordered[rank])

    # Relations: "the circle left of the blue square" when the reference is unique and exactly
    # one object of the target kind lies clearly on that side of it.
    for ref_noun, ref_members in groups:
        if len(ref_members) != 1 or ref_noun.endswith("shape"):
            continue
        ref = objs[ref_members[0]]
        for shape in SHAPES:
            candidates = [i for i, o in enumerate(objs) if o.shape == shape and i != ref_members[0]]
            for relation in RELATIONS:
                side = [i for i in candidates if _on_side(objs[i], ref, relation)]
                if len(side) == 1:
                    add(f"the {shape} {relation} the {ref_noun}", side[0])
    return found, absent


def _on_side(obj: SceneObject, ref: SceneObject, relation: str) -> bool:
    """Clearly on one side: the whole object beyond the reference's centre line, and offset more
    along that axis than across it (so 'left of' never means 'mostly above')."""
    dx, dy = obj.cx - ref.cx, obj.cy - ref.cy
    if relation == "left of":
        return dx < -(obj.size + 0.5 * ref.size) and abs(dx) > abs(dy)
    if relation == "right of":
        return dx > obj.size + 0.5 * ref.size and abs(dx) > abs(dy)
    if relation == "above":
        return dy < -(obj.size + 0.5 * ref.size) and abs(dy) > abs(dx)
    if relation == "below":
        return dy > obj.size + 0.5 * ref.size and abs(dy) > abs(dx)
    raise ValueError(relation)


def _reasoning_queries(scene: Scene) -> tuple[list[Query], list[Query]]:
    objs = scene.objects
    present, absent = [], []
    for shape, sentences in SHAPE_REASONS.items():
        targets = tuple(i for i, o in enumerate(objs) if o.shape == shape)
        for sentence in sentences:
            q = Query(sentence, PLURAL[shape], "reasoning", "sentence", targets)
            (present if targets else absent).append(q)
    for color, sentences in COLOR_REASONS.items():
        targets = tuple(i for i, o in enumerate(objs) if o.color == color)
        for sentence in sentences:
            q = Query(sentence, f"{color} shapes", "reasoning", "sentence", targets)
            (present if targets else absent).append(q)
    return present, absent


def scene_queries(scene: Scene) -> dict[str, list[Query]]:
    """Every valid instruction about a scene, grouped by kind (absent ones = no target)."""
    cat, cat_absent = _category_queries(scene)
    ref, ref_absent = _referring_queries(scene)
    rea, rea_absent = _reasoning_queries(scene)
    return {
        "category": cat,
        "referring": ref,
        "reasoning": rea,
        "no_target": cat_absent + ref_absent + rea_absent,
    }


def _pick(rng: np.random.Generator, items: list[Query], k: int, used: set[str]) -> list[Query]:
    pool = [q for q in items if q.text not in used]
    if not pool or k <= 0:
        return []
    order = rng.permutation(len(pool))[:k]
    chosen = [pool[int(i)] for i in order]
    used.update(q.text for q in chosen)
    return chosen


def benchmark_queries(rng: np.random.Generator, queries: dict[str, list[Query]]) -> list[Query]:
    """2-4 queries for the Inst2Seg-form benchmark, mostly category and referring, with
    reasoning and no-target cases mixed in."""
    used: set[str] = set()
    chosen = _pick(rng, queries["category"], 1, used)
    weights = {"category": 0.35, "referring": 0.25, "reasoning": 0.15, "no_target": 0.25}
    extra = int(rng.integers(1, 4))
    kinds = list(weights)
    probabilities = np.array([weights[k] for k in kinds])
    for _ in range(extra):
        kind = kinds[int(rng.choice(len(kinds), p=probabilities))]
        chosen += _pick(rng, queries[kind], 1, used)
    return chosen


def training_queries(rng: np.random.Generator, queries: dict[str, list[Query]]) -> tuple[list[Query], list[Query]]:
    """(instseg phrases, referring/reasoning annotations) for the two training records."""
    used: set[str] = set()
    inst = _pick(rng, queries["category"], 7, used)
    absent = [q for q in queries["no_target"] if q.kind == "category"]
    inst += _pick(rng, absent, min(int(rng.integers(1, 3)), 10 - len(inst)), used)
    refer = _pick(rng, queries["referring"], 3, used)
    refer += _pick(rng, queries["reasoning"], 2, used)
    refer += _pick(rng, [q for q in queries["no_target"] if q.kind != "category"], 1, used)
    return inst, refer


def near_misses(scene: Scene, queries: dict[str, list[Query]]) -> list[Query]:
    """Absent category phrases one attribute away from something in the image: "red squares"
    beside a red triangle or a green square, or "rings" among circles. Only these need the
    model to look at shape and colour together; "blue shapes" with no blue at all is easy."""
    colors = {o.color for o in scene.objects}
    shapes = {o.shape for o in scene.objects}
    found = []
    for q in queries["no_target"]:
        if q.kind != "category":
            continue
        words = q.category.split()
        if len(words) == 1:  # "rings": any other shape is a near miss
            found.append(q)
        elif words[1] != "shapes" and (words[0] in colors or words[1][:-1] in shapes):
            found.append(q)
    return found


def add_near_misses(rng: np.random.Generator, scene: Scene, queries: dict[str, list[Query]],
                    inst: list[Query], count: int) -> list[Query]:
    """`inst` plus up to `count` near-miss phrases it does not hold yet (at most 10 phrases in
    all, the release's limit). Hard negatives teach what the benchmark's absent phrases test."""
    used = {q.text for q in inst}
    return inst + _pick(rng, near_misses(scene, queries), min(count, 10 - len(inst)), used)


# ----------------------------------------------------------------------------- writing


def _training_annotation(query: Query, rles: list[str]) -> dict:
    targets = [rles[i] for i in query.targets]
    text = normalize_phrase(query.text)
    category = normalize_phrase(query.category)
    return {
        "type": query.ann_type,
        "text": text,
        "category": category,
        "ann_type": "mask",
        "ann": targets if targets else None,
        "answer": text if query.ann_type == "phrase" else category,
    }


def _write_json(path: Path, payload: object) -> None:
    temporary = path.with_suffix(path.suffix + ".tmp")
    with open(temporary, "w", encoding="utf-8") as handle:
        json.dump(payload, handle, ensure_ascii=False, separators=(",", ":"))
        handle.write("\n")
    os.replace(temporary, path)


def split_rng(seed: int, split: str, index: int, stream: int = 0) -> np.random.Generator:
    """Independent random stream per (seed, split, image): image i is the same whatever n is.
    `stream` > 0 gives further independent streams of the same image."""
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r} (choose from {', '.join(SPLITS)})")
    entropy = [int(seed), SPLITS[split], int(index)] + ([int(stream)] if stream else [])
    return np.random.default_rng(np.random.SeedSequence(entropy))


def generate(
    out_dir: str | Path,
    n: int,
    seed: int = 0,
    split: str = "train",
    progress: bool = True,
    near_miss_phrases: int = 0,
) -> dict[str, int]:
    """Write `n` images and their annotations under `out_dir`; returns counts for the summary.
    `near_miss_phrases` adds that many hard-negative phrases to each `instseg` record."""
    if n <= 0:
        raise UserError(f"--n must be positive, got {n}")
    if seed < 0:
        raise UserError(f"--seed must be non-negative, got {seed}")
    if not 0 <= near_miss_phrases <= 3:
        raise UserError(f"--near-misses must be in 0..3, got {near_miss_phrases}")
    out = Path(out_dir)
    images_dir = out / "images"
    try:
        images_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"cannot create {images_dir}: {error.strerror}") from None
    training: list[dict] = []
    benchmark: list[dict] = []
    scenes: list[dict] = []
    counts = {"images": 0, "objects": 0, "train_annotations": 0, "benchmark_queries": 0, "no_target_queries": 0}
    iterator: Iterable[int] = range(n)
    if progress:
        from tqdm import tqdm

        iterator = tqdm(iterator, total=n, desc=f"synth {split}", unit="img")
    for index in iterator:
        rng = split_rng(seed, split, index)
        scene = make_scene(rng)
        name = f"images/{split}_{index:05d}.png"
        Image.fromarray(scene.image, "RGB").save(out / name, format="PNG")
        rles = [json.dumps(encode_mask(o.mask), separators=(",", ":")) for o in scene.objects]
        queries = scene_queries(scene)
        inst, refer = training_queries(rng, queries)
        if near_miss_phrases:
            # A stream of its own: the benchmark queries drawn next stay the same.
            inst = add_near_misses(split_rng(seed, split, index, stream=1), scene, queries, inst, near_miss_phrases)
        for record_type, chosen in (("instseg", inst), ("referring", refer)):
            if not chosen:
                continue
            training.append(
                {
                    "image": name,
                    "height": scene.height,
                    "width": scene.width,
                    "type": record_type,
                    "annotation": [_training_annotation(q, rles) for q in chosen],
                }
            )
            counts["train_annotations"] += len(chosen)
        bench = benchmark_queries(rng, queries)
        annotation = []
        for q in bench:
            entry: dict = {"text": normalize_phrase(q.text)}
            if q.targets:
                entry["mask"] = [encode_mask(scene.objects[i].mask) for i in q.targets]
            else:
                counts["no_target_queries"] += 1
            annotation.append(entry)
        benchmark.append({"image": name, "height": scene.height, "width": scene.width, "annotation": annotation})
        scenes.append(
            {
                "image": name,
                "height": scene.height,
                "width": scene.width,
                "objects": [
                    {"shape": o.shape, "color": o.color, "box": list(o.box()), "area": o.area} for o in scene.objects
                ],
            }
        )
        counts["images"] += 1
        counts["objects"] += len(scene.objects)
        counts["benchmark_queries"] += len(bench)
    _write_json(out / "train.json", training)
    _write_json(out / "inst2seg.json", benchmark)
    _write_json(out / "scenes.json", scenes)
    return counts


def vocabulary() -> list[str]:
    """Every word the generated instructions and answers can contain (lower-case, punctuation
    split off), plus the Inst2Seg prompt suffix: for word-level tokenizers of tiny models."""
    words: set[str] = set()
    texts = [INST2SEG_PROMPT_SUFFIX, "the from shapes shape largest smallest"]
    texts += list(COLORS) + list(SHAPES) + list(PLURAL.values()) + list(ORDINALS)
    texts += list(ORDER_FROM) + list(EXTREMES) + list(RELATIONS)
    texts += [s for group in SHAPE_REASONS.values() for s in group]
    texts += [s for group in COLOR_REASONS.values() for s in group]
    for text in texts:
        for raw in text.replace("?", " ? ").replace(".", " . ").replace(",", " , ").split():
            words.add(raw.lower())
    return sorted(words)
