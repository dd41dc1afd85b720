"""Training step time on the tiny model, for this checkout and (optionally) another one.

    python scripts/bench_train_step.py [--steps 25] [--repeat 2] [--other DIR]

Each run trains a scratch tiny model (instructsam_core.tiny defaults) on `instructsam synth`
data (24 images, one hard negative per instseg record) for --steps steps of 8 examples, in a
process of its own with two threads, and reports the median and the fastest seconds per step
after the first three (start-up and first-touch allocations excluded; the median and the minimum
because other jobs on a shared machine stretch single steps) and its last logged losses. Variants:
"defaults" (the recipe defaults: here the release's training) and "synthetic" (the options of
training/synthetic.yaml, which trained the embedded default model). `--other DIR` also runs the
checkout in DIR (e.g. `git archive BASE | tar -x -C DIR`) with the same recipes (of the synthetic
options, those its recipes know), interleaved with this one's runs so both see the same machine
load; with the synthetic options both do the same work, and their losses should agree. Each run
also reports the query blocks (phrases) and answer tokens per step, the work a step does.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
SYNTHETIC_OPTIONS = {
    "data": {"samples": "turns", "instruction_style": "benchmark", "instseg_single_phrase_fraction": 0.5},
    "schedule": {"warmup_from": 1},
    "batch": {"accumulation": "mean", "group_by_modality_length": False},
    "loss": {"point_sampling": "nearest", "phrase_prompt": "model", "no_target_phrase": "unmatched",
             "targetless_samples": "all_terms", "box_samples": "mask", "matcher": {"dice_smooth": 1.0}},
}


def _merge_known(recipe: dict, extra: dict, known: dict) -> None:
    """Add the keys of `extra` that this checkout's recipe defaults know."""
    for key, value in extra.items():
        if key not in known:
            continue
        if isinstance(value, dict):
            _merge_known(recipe.setdefault(key, {}), value, known[key])
        else:
            recipe[key] = value


def worker(args: argparse.Namespace) -> None:
    import torch
    import yaml

    import instructsam_core
    from instructsam_core.synth import generate
    from instructsam_core.training.recipe import DEFAULTS, load_recipe
    from instructsam_core.training.trainer import Trainer

    torch.set_num_threads(2)
    work = Path(args.work)
    data = work / "data"
    if not (data / "train.json").is_file():
        generate(data, 24, seed=5, split="train", progress=False, near_miss_phrases=1)
    recipe = {
        "seed": 1,
        "model": {"init": "scratch", "scratch": {}},
        "data": {"mixture": [{"name": "synth", "path": "train.json"}], "num_workers": 0},
        "optimizer": {"lr_groups": [{"name": "all", "pattern": "", "lr": 1.0e-3}], "fused": True},
        "schedule": {"max_steps": args.steps, "warmup_ratio": 0.1},
        "batch": {"per_device": 8, "grad_accum": 1},
        "precision": "fp32",
        "threads": 2,
        "loss": {"num_points": 2304, "weights": {"mask_dice": 4.0}},
        "checkpoint": {"every_steps": 100000, "keep": 1},
        "log_every": 1,
    }
    if args.variant == "synthetic":
        _merge_known(recipe, SYNTHETIC_OPTIONS, DEFAULTS)
    path = work / f"recipe-{os.getpid()}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    run = work / f"run-{os.getpid()}"
    work_done = {"phrases": 0, "tokens": 0, "calls": 0}
    from instructsam_core.training import trainer as trainer_module

    criterion_call = trainer_module.SetCriterion.__call__

    def counting(self, mask_logits, *rest, **kwargs):
        labels = rest[3] if len(rest) > 3 else kwargs.get("labels")
        work_done["phrases"] += 0 if mask_logits is None else int(mask_logits.shape[0])
        work_done["tokens"] += int((labels != -100).sum()) if labels is not None else 0
        work_done["calls"] += 1
        return criterion_call(self, mask_logits, *rest, **kwargs)

    trainer_module.SetCriterion.__call__ = counting
    Trainer(load_recipe(path), data, run, progress=False).run()
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    steps = sorted(b["elapsed_s"] - a["elapsed_s"] for a, b in zip(log[2:], log[3:]))
    print(json.dumps({"code": str(Path(instructsam_core.__file__).parents[1]), "variant": args.variant,
                      "median_s": steps[len(steps) // 2], "min_s": steps[0],
                      "phrases_per_step": work_done["phrases"] / work_done["calls"],
                      "tokens_per_step": work_done["tokens"] / work_done["calls"], "last": {k: log[-1][k] for k in ("loss", "text", "mask_bce",
                                                                                "mask_dice", "score")}}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--other", type=Path, default=None, help="another checkout to time the same way")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--variant", default="defaults", help=argparse.SUPPRESS)
    parser.add_argument("--work", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    runs = [(HERE, "defaults"), (HERE, "synthetic")]
    if args.other is not None:
        runs = [(args.other.resolve(), "defaults"), runs[0], (args.other.resolve(), "synthetic"), runs[1]]
    results: dict[tuple[str, str], list[dict]] = {}
    with tempfile.TemporaryDirectory() as work:
        for _ in range(args.repeat):
            for code, variant in runs:
                env = {**os.environ, "PYTHONPATH": str(code), "OMP_NUM_THREADS": "2"}
                command = [sys.executable, str(Path(__file__).resolve()), "--worker", "--variant", variant,
                           "--steps", str(args.steps), "--work", work]
                out = subprocess.run(command, env=env, capture_output=True, text=True, check=True, cwd=work)
                result = json.loads(out.stdout.strip().splitlines()[-1])
                results.setdefault((result["code"], variant), []).append(result)
    print(f"tiny model, {args.steps} steps of 8, 2 threads; seconds per step after the first three, "
          "median / fastest of each run")
    for (code, variant), found in results.items():
        times = ", ".join(f"{r['median_s']:.2f} / {r['min_s']:.2f}" for r in found)
        print(f"{code} [{variant}]: {times}; {found[-1]['phrases_per_step']:.1f} phrases and "
              f"{found[-1]['tokens_per_step']:.0f} answer tokens a step; last losses {found[-1]['last']}")


if __name__ == "__main__":
    main()
