"""The instructions about a scene and the objects each one means: category phrases, referring
phrases (attributes, superlatives, ordinals, relations), reasoning sentences, and the absent
ones (no target); how many of each a benchmark and a training record get; near misses."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from instructsam_core.synth.scenes import COLORS, PLURAL, SHAPES, Scene, SceneObject

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


@dataclass(frozen=True)
class Query:
    """An instruction about a scene and the objects it means (empty = no target)."""

    text: str
    category: str  # the phrase the model answers with
    kind: str  # "category" | "referring" | "reasoning"
    ann_type: str  # "phrase" | "sentence"
    targets: tuple[int, ...]


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
