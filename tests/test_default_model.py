"""The embedded default model has learned its task: checked on scenes it never saw in training.

The scenes come from `instructsam synth`'s test split (independent of the train and val streams),
so these figures are measured here, not copied from the model's README. The bounds sit well
above what an untrained model reaches (nothing) and below what the shipped model measures, so
they catch a broken model (wrong tokenizer, stale weights, a preprocessing change) without
being flaky.
"""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from instructsam_core import synth
from instructsam_core.masks import mask_iou
from instructsam_core.predictor import Predictor
from instructsam_ros.demo.scenes import default_instructions, demo_scene, synthetic_scene

NUM_SCENES = 16


@pytest.fixture(scope="module")
def scenes_and_queries():
    out = []
    for index in range(NUM_SCENES):
        rng = synth.split_rng(1, "test", index)
        scene = synth.make_scene(rng)
        queries = synth.scene_queries(scene)
        out.append((scene, queries))
    return out


@pytest.fixture(scope="module")
def predictor():
    # auto_phrase=False: bare phrases too go through generation, so the model must name them.
    return Predictor.from_pretrained("default", device="cpu", auto_phrase=False)


def test_default_model_names_the_category_it_is_asked_for(predictor, scenes_and_queries):
    asked = named = 0
    for scene, queries in scenes_and_queries:
        for query in queries["category"][:2]:
            prediction = predictor.predict(scene.image, query.text + synth.INST2SEG_PROMPT_SUFFIX)
            asked += 1
            named += prediction.phrases == [query.text]
    # Measured: every one. The model before the tokenizer fix named none.
    assert named >= 0.9 * asked, f"named {named} of {asked} category phrases"


def test_default_model_segments_colour_phrases_of_unseen_scenes(predictor, scenes_and_queries):
    ious = []
    for scene, queries in scenes_and_queries:
        for query in queries["category"]:
            if not query.text.endswith(" shapes") or len(query.targets) != 1:
                continue  # "red shapes" with one red object: the easiest, unambiguous case
            prediction = predictor.predict(scene.image, query.text + synth.INST2SEG_PROMPT_SUFFIX)
            truth = scene.objects[query.targets[0]].mask
            best = max((mask_iou(inst.mask, truth) for inst in prediction.instances), default=0.0)
            ious.append(best)
    assert len(ious) >= 10
    # An untrained model keeps no instance (IoU 0 everywhere).
    assert np.mean(ious) >= 0.5, f"mean best IoU {np.mean(ious):.2f} over {len(ious)} phrases"


def test_default_model_returns_every_instance_of_a_colour(predictor, scenes_and_queries):
    # "red shapes" with two or three red objects: every one must come back as its own instance.
    found = total = 0
    for scene, queries in scenes_and_queries:
        for query in queries["category"]:
            if not query.text.endswith(" shapes") or len(query.targets) < 2:
                continue
            prediction = predictor.predict(scene.image, query.text + synth.INST2SEG_PROMPT_SUFFIX)
            for target in query.targets:
                truth = scene.objects[target].mask
                total += 1
                found += any(mask_iou(inst.mask, truth) >= 0.5 for inst in prediction.instances)
    assert total >= 6
    # Measured: 15 of 26. The three models before the region head: 18, 18 and 19 (its score is a
    # product of two probabilities, so a few true instances fall under the threshold); one with
    # one instance per phrase: 8.
    assert found >= 0.5 * total, f"{found} of {total} instances found"


def test_default_model_rejects_absent_shapes_of_a_present_colour(predictor, scenes_and_queries):
    # "red squares" beside a red triangle: only the shape tells that nothing is meant. Measured on
    # these scenes: 55 of 103 rejected; the model before the region head rejected 0 of 103.
    asked = rejected = 0
    for scene, queries in scenes_and_queries:
        colours = {o.color for o in scene.objects}
        for query in synth.near_misses(scene, queries):
            words = query.text.split()
            if len(words) != 2 or words[0] not in colours:
                continue
            prediction = predictor.predict(scene.image, query.text + synth.INST2SEG_PROMPT_SUFFIX)
            asked += 1
            rejected += not prediction.instances
    assert asked >= 10
    assert rejected >= 0.35 * asked, f"rejected {rejected} of {asked} absent shapes"


def test_default_model_finds_what_the_demo_asks_for_wherever_the_scene_pans(predictor):
    # The README's demo (instructsam-demo: scene seed 3 at 640x480, two red squares and a blue
    # triangle, panned sideways) asks "squares", then "which shapes look like a warning sign?".
    # Here the scene is shifted through its whole width in 24 steps (one every 26-27 px, about
    # half a 14-px patch of the detector's grid) and asked both, as the node streams: the phrase
    # generated once, then the single forward pass with it on every frame. A shift counts when an
    # instance covers an object of the meant shape (IoU >= 0.5). Measured: squares at 24 and the
    # triangle at 21 of 24 shifts; before each region of a mask was judged alone, squares at 10
    # and the triangle at none (the 6 shifts with a "triangles" instance had found red squares).
    frame, shapes, colours = synthetic_scene(3, 480, 640)
    height, width = frame.shape[:2]
    objects = [(o.shape, cv2.resize(o.mask.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST) > 0)
               for o in demo_scene(3).objects]
    squares, warning_sign = default_instructions(shapes, colours)
    node = Predictor(predictor.model, predictor.processor)  # as the node runs it: a bare phrase is its own phrase
    for instruction, phrase, shape, bound in ((squares, "squares", "square", 22), (warning_sign, "triangles", "triangle", 18)):
        assert node.predict(frame, instruction).phrases == [phrase]
        found = 0
        for step in range(24):
            shift = step * width // 24
            prediction = node.predict(np.roll(frame, shift, axis=1), instruction, phrases=[phrase])
            meant = [np.roll(mask, shift, axis=1) for kind, mask in objects if kind == shape]
            found += any(mask_iou(inst.mask, truth) >= 0.5 for inst in prediction.instances for truth in meant)
        assert found >= bound, f"{phrase!r}: an instance of a {shape} at {found} of 24 shifts"
