"""A procedurally generated data set in the released formats: coloured shapes and instructions.

Why: the real data sets are tens of GB and cannot be fetched here, but training, evaluation,
the tests and the ROS demo all need images with instance masks and instructions of every kind
(category, referring with attributes / relations / ordinals, reasoning, multi-instance,
no target). A tiny model must be able to learn it in minutes on a CPU, so the vocabulary is
small (4 colours x 4 shapes), colours are solid and distinct, objects never overlap and are at
least ~13 px across their half-extent.

The parts: the pictures (`scenes`), the instructions about them (`queries`) and the files
(`dataset`). Output of `generate(out_dir, n, seed, split)`:
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

from instructsam_core.synth.dataset import SPLITS, generate, split_rng, vocabulary
from instructsam_core.synth.queries import (
    COLOR_REASONS,
    INST2SEG_PROMPT_SUFFIX,
    SHAPE_REASONS,
    Query,
    add_near_misses,
    benchmark_queries,
    near_misses,
    scene_queries,
    training_queries,
)
from instructsam_core.synth.scenes import COLORS, PLURAL, SHAPES, Scene, SceneObject, make_scene

__all__ = [
    "COLORS", "COLOR_REASONS", "INST2SEG_PROMPT_SUFFIX", "PLURAL", "SHAPES", "SHAPE_REASONS", "SPLITS", "Query",
    "Scene", "SceneObject", "add_near_misses", "benchmark_queries", "generate", "make_scene", "near_misses",
    "scene_queries", "split_rng", "training_queries", "vocabulary",
]
