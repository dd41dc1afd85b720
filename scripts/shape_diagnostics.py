"""Does a model trained on `instructsam synth` data tell shapes apart? Two measurements.

1. Semantic-map discrimination (default): on the first N scenes of a synth split, for every
   shape-only phrase ("circles") and colour-only phrase ("red shapes") that names some but not
   all objects, the mean probability of SAM3's semantic map over the named objects' boxes minus
   that over the other objects' boxes, averaged per kind. 0 = blind, 1 = perfect.
2. `--probe`: how linearly decodable an object's shape and colour are from the detector's FROZEN
   image features at its centre cell, per FPN level (a logistic-regression head trained on 80 %
   of the objects of the first N scenes of the split, accuracy on the other 20 %; 4 classes, so
   0.25 is chance). `--reinit` re-initialises the image encoder first: the same probe on
   untrained features, for comparison.

    python scripts/shape_diagnostics.py --model default --data data/synth-val
    python scripts/shape_diagnostics.py --model default --data data/synth --probe [--reinit]

Why a script of its own: the learning check's no-target errors are all phrases that need shape
(BENCHMARKS.md), and these two numbers say whether it is the image features or the phrase
conditioning that lacks it.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from instructsam_core import synth
from instructsam_core.images import load_image
from instructsam_core.model_paths import resolve_model_dir
from instructsam_core.predictor import Predictor


def read_scenes(data_dir: Path, limit: int) -> list[dict]:
    path = data_dir / "scenes.json"
    if not path.is_file():
        sys.exit(f"error: {path} not found (make the split with `instructsam synth --out {data_dir} ...`)")
    scenes = json.loads(path.read_text())
    if not isinstance(scenes, list) or not scenes:
        sys.exit(f"error: {path} holds no scenes")
    for index, scene in enumerate(scenes[:limit]):
        objects = scene.get("objects") if isinstance(scene, dict) else None
        if not isinstance(objects, list) or not all(
            isinstance(o, dict) and o.get("shape") in synth.SHAPES and o.get("color") in synth.COLORS
            and isinstance(o.get("box"), list) and len(o["box"]) == 4 for o in objects
        ):
            sys.exit(f"error: {path}: scene {index} is not an `instructsam synth` scene")
    return scenes[:limit]


def box_mean(grid: torch.Tensor, box: list[int], height: int, width: int) -> float:
    """Mean of a [h, w] map over an object's box given in image pixels (at least one cell)."""
    h, w = grid.shape
    y0, x0 = int(box[1] * h / height), int(box[0] * w / width)
    y1, x1 = max(y0 + 1, int(box[3] * h / height)), max(x0 + 1, int(box[2] * w / width))
    return float(grid[y0:y1, x0:x1].mean())


def semantic_discrimination(predictor: Predictor, data_dir: Path, scenes: list[dict]) -> dict[str, list[float]]:
    # The Predictor returns instances only; its scoring step is the one place that sees the
    # detector outputs (semantic map included), so it is wrapped for the run and then restored.
    captured: dict = {}
    score = predictor.scores

    def capture(outputs):
        captured["outputs"] = outputs
        return score(outputs)

    predictor.scores = capture
    try:
        return _discriminate(predictor, data_dir, scenes, captured)
    finally:
        del predictor.scores  # back to the class's method


def _discriminate(predictor: Predictor, data_dir: Path, scenes: list[dict], captured: dict) -> dict[str, list[float]]:
    result: dict[str, list[float]] = {"shape": [], "colour": []}
    for scene in scenes:
        objects = scene["objects"]
        image = load_image(data_dir / scene["image"])
        height, width = image.shape[:2]
        phrases = [("shape", synth.PLURAL[s], [o["shape"] == s for o in objects]) for s in sorted({o["shape"] for o in objects})]
        phrases += [("colour", f"{c} shapes", [o["color"] == c for o in objects]) for c in sorted({o["color"] for o in objects})]
        for kind, text, named in phrases:
            if all(named):
                continue  # nothing to tell apart
            predictor.predict(image, text + synth.INST2SEG_PROMPT_SUFFIX, threshold=0.0)
            semantic = captured.pop("outputs").semantic_logits
            if semantic is None:
                sys.exit("error: this model's detector returns no semantic map")
            grid = semantic[0].float().sigmoid()
            values = [box_mean(grid, o["box"], height, width) for o in objects]
            inside = np.mean([v for v, n in zip(values, named) if n])
            outside = np.mean([v for v, n in zip(values, named) if not n])
            result[kind].append(float(inside - outside))
    return result


def feature_probe(predictor: Predictor, data_dir: Path, scenes: list[dict], reinit: bool, steps: int = 500) -> None:
    model = predictor.model
    detector = model.model.grounding_model.model
    if reinit:
        torch.manual_seed(0)
        for module in detector.vision_encoder.modules():
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
    features: dict[int, list[torch.Tensor]] = {}
    cells_per_level: dict[int, int] = {}
    shapes, colours = [], []
    with torch.no_grad():
        for scene in scenes:
            image = load_image(data_dir / scene["image"])
            height, width = image.shape[:2]
            pixels = predictor.processor([image], ["x"], phrases=[["x"]])["sam_pixel_values"]
            levels = detector.encode_images(pixels).fpn_hidden_states[:-1]
            for level, grid in enumerate(levels):
                cells = cells_per_level[level] = grid.shape[-1]
                for o in scene["objects"]:
                    x0, y0, x1, y1 = o["box"]
                    row = min(cells - 1, int((y0 + y1) / 2 / height * cells))
                    col = min(cells - 1, int((x0 + x1) / 2 / width * cells))
                    features.setdefault(level, []).append(grid[0, :, row, col].float())
            shapes += [synth.SHAPES.index(o["shape"]) for o in scene["objects"]]
            colours += [list(synth.COLORS).index(o["color"]) for o in scene["objects"]]
    labels = {"shape": torch.tensor(shapes), "colour": torch.tensor(colours)}
    split = int(0.8 * len(shapes))
    for level, rows in features.items():
        x = torch.stack(rows)
        x = (x - x[:split].mean(0)) / (x[:split].std(0) + 1e-6)
        cells = cells_per_level[level]
        for name, y in labels.items():
            torch.manual_seed(0)
            head = torch.nn.Linear(x.shape[1], 4)
            optimizer = torch.optim.Adam(head.parameters(), lr=1e-2)
            for _ in range(steps):
                loss = torch.nn.functional.cross_entropy(head(x[:split]), y[:split])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            accuracy = float((head(x[split:]).argmax(-1) == y[split:]).float().mean())
            print(f"FPN level {level} ({cells}x{cells}): {name} held-out accuracy {accuracy:.3f} "
                  f"({len(y) - split} objects)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="default", help="model directory or 'default'")
    parser.add_argument("--data", type=Path, required=True, help="an `instructsam synth` output directory")
    parser.add_argument("--scenes", type=int, default=None, help="how many scenes (default 60; with --probe 1200)")
    parser.add_argument("--probe", action="store_true", help="linear probe of the frozen image features")
    parser.add_argument("--reinit", action="store_true", help="with --probe: re-initialise the image encoder first")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    if (args.scenes is not None and args.scenes < 1) or args.threads < 1:
        parser.error("--scenes and --threads must be positive")
    if args.reinit and not args.probe:
        parser.error("--reinit only goes with --probe")
    torch.set_num_threads(args.threads)
    predictor = Predictor.from_pretrained(resolve_model_dir(args.model), device="cpu")
    limit = args.scenes or (1200 if args.probe else 60)
    if args.probe:
        feature_probe(predictor, args.data, read_scenes(args.data, limit), args.reinit)
        return
    result = semantic_discrimination(predictor, args.data, read_scenes(args.data, limit))
    for kind, values in result.items():
        print(f"{kind}-only phrases: semantic discrimination {np.mean(values):.3f} over {len(values)} phrases")


if __name__ == "__main__":
    main()
