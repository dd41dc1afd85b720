"""The README demo's scene panned through its whole width: what a model finds for the demo's two
instructions at every shift, and how long a frame takes.

    python scripts/demo_scene_shifts.py                       # the embedded default model
    python scripts/demo_scene_shifts.py --model DIR --steps 48
    PYTHONPATH=OTHER_CHECKOUT python OTHER_CHECKOUT/scripts/demo_scene_shifts.py   # another checkout

The scene is `instructsam-demo`'s (seed 3, 640x480, two red squares and a blue triangle). Each
instruction is answered as the ROS node streams it: its phrases from the first frame (a bare
phrase is its own phrase, a question is generated), then the single forward pass with those
phrases on every shifted frame (np.roll, as the demo's camera pans). Per instruction it prints
the shifts where an instance covers an object of the meant shape (IoU >= 0.5), the shifts with
any instance, the instances that cover no such object, and the median time of one frame. The
scene is built here from `synth` as the demo builds it (and checked against the demo's frame),
so the script also runs on checkouts older than `demo_scene`.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import cv2
import numpy as np


def demo_objects(seed: int, height: int, width: int) -> list[tuple[str, np.ndarray]]:
    """(shape, mask at the frame size) of every object of the demo's scene for `seed`."""
    from instructsam_core import synth
    from instructsam_ros.demo.scenes import synthetic_scene

    rng = np.random.default_rng(seed)
    for _ in range(100):
        scene = synth.make_scene(rng)
        if len(scene.objects) >= 3:
            break
    frame, _, _ = synthetic_scene(seed, height, width)
    if not np.array_equal(frame, cv2.resize(scene.image, (width, height), interpolation=cv2.INTER_NEAREST)):
        raise SystemExit("this is not the scene the demo shows (did synthetic_scene change?)")
    return [(o.shape, cv2.resize(o.mask.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST) > 0)
            for o in scene.objects]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--size", default="640x480", help="WxH")
    parser.add_argument("--steps", type=int, default=24, help="shifts through the whole width")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    import torch

    from instructsam_core import synth
    from instructsam_core.masks import mask_iou
    from instructsam_core.predictor import Predictor
    from instructsam_ros.demo.scenes import default_instructions, synthetic_scene

    torch.set_num_threads(args.threads)
    width, height = (int(v) for v in args.size.lower().split("x"))
    frame, shapes, colours = synthetic_scene(args.seed, height, width)
    objects = demo_objects(args.seed, height, width)
    predictor = Predictor.from_pretrained(args.model)
    singular = {plural: shape for shape, plural in synth.PLURAL.items()}
    for instruction in default_instructions(shapes, colours):
        phrases = predictor.predict(frame, instruction).phrases
        meant_shapes = {singular.get(p) for p in phrases}
        found = anything = stray = total = 0
        seconds = []
        for step in range(args.steps):
            shift = step * width // args.steps
            shifted = np.roll(frame, shift, axis=1)
            start = time.perf_counter()
            prediction = predictor.predict(shifted, instruction, phrases=phrases)
            seconds.append(time.perf_counter() - start)
            meant = [np.roll(mask, shift, axis=1) for shape, mask in objects if shape in meant_shapes]
            hits = [any(mask_iou(inst.mask, truth) >= 0.5 for truth in meant) for inst in prediction.instances]
            found += any(hits)
            anything += bool(hits)
            stray += hits.count(False)
            total += len(hits)
        print(json.dumps({
            "instruction": instruction, "phrases": phrases, "shifts": args.steps,
            "meant_object_found": found, "any_instance": anything,
            "instances_covering_no_meant_object": f"{stray} of {total}",
            "frame_ms_median": round(statistics.median(seconds) * 1e3, 1),
        }))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
