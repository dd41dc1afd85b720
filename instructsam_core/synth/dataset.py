"""Writing the data set: every image and its records in the released formats, a pure function of
(seed, split) (the package docstring lists the files)."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable

import numpy as np
from PIL import Image

from instructsam_core.errors import UserError
from instructsam_core.masks import encode_mask
from instructsam_core.synth.queries import (
    COLOR_REASONS,
    EXTREMES,
    INST2SEG_PROMPT_SUFFIX,
    ORDER_FROM,
    ORDINALS,
    RELATIONS,
    SHAPE_REASONS,
    Query,
    add_near_misses,
    benchmark_queries,
    scene_queries,
    training_queries,
)
from instructsam_core.synth.scenes import COLORS, PLURAL, SHAPES, make_scene
from instructsam_core.tokens import normalize_phrase

SPLITS = {"train": 0, "val": 1, "test": 2}


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
