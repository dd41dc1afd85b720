"""Running a model over a suite: resumable, shardable, one durable line group per query.

Sharding: query k (in file order) belongs to shard k % num_shards. Each shard writes its own
`predictions.shardIII-of-NNN.jsonl`; when every shard file holds all of its queries, they are
merged into `predictions.jsonl` (automatically by whichever shard finishes last, or by
`instructsam eval ... --merge`). With torchrun, RANK / WORLD_SIZE / LOCAL_RANK choose the shard
and the GPU:

    torchrun --nproc_per_node 8 -m instructsam_core.cli eval --suite inst2seg \
        --data inst2seg.json --images IMAGES --model MODEL --out OUT --device cuda

Resume: re-running with the same --out skips queries whose "done" marker is written. `run.json`
records what the run is (suite, data file, model, limit, phrase mode, shards) so that a resume
with different settings is refused instead of mixing two runs in one file.
"""
from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from instructsam_core.errors import UserError
from instructsam_core.evaluation.predictions import (
    PREDICTIONS_NAME,
    PredictionsWriter,
    merge_prediction_files,
    read_predictions,
    shard_file_name,
)
from instructsam_core.evaluation.suites import EvalQuery, SuiteData
from instructsam_core.masks import encode_mask

PHRASE_MODES = ("generate", "text", "auto")


@dataclass(frozen=True)
class ShardSpec:
    index: int
    count: int

    def owns(self, position: int) -> bool:
        return position % self.count == self.index


def shard_from_args(shard: int | None, num_shards: int | None, environ: dict | None = None) -> ShardSpec:
    """--shard/--num-shards if given, else torchrun's RANK/WORLD_SIZE, else a single shard."""
    environ = os.environ if environ is None else environ
    if shard is None and num_shards is None and "WORLD_SIZE" in environ and "RANK" in environ:
        try:
            shard, num_shards = int(environ["RANK"]), int(environ["WORLD_SIZE"])
        except ValueError:
            raise UserError("RANK and WORLD_SIZE must be integers") from None
    if num_shards is None:
        num_shards = 1
    if shard is None:
        shard = 0
    if num_shards < 1:
        raise UserError(f"--num-shards must be at least 1, got {num_shards}")
    if not 0 <= shard < num_shards:
        raise UserError(f"--shard must be in [0, {num_shards}), got {shard}")
    return ShardSpec(shard, num_shards)


def device_for_shard(device: str, environ: dict | None = None) -> str:
    """`cuda` under torchrun means this process's GPU (LOCAL_RANK)."""
    environ = os.environ if environ is None else environ
    if device == "cuda" and "LOCAL_RANK" in environ:
        return f"cuda:{int(environ['LOCAL_RANK'])}"
    return device


def check_run_config(out_dir: Path, config: dict) -> None:
    """Refuse to resume a run whose run.json records different settings (writes nothing)."""
    path = out_dir / "run.json"
    if not path.exists():
        return
    try:
        previous = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UserError(f"{path} is unreadable ({error}); use a new --out") from None
    if not isinstance(previous, dict):
        raise UserError(f"{path} does not hold a run's settings; use a new --out")
    differing = sorted(k for k in set(previous) | set(config) if previous.get(k) != config.get(k))
    if differing:
        raise UserError(
            f"{out_dir} holds a run with different settings ({', '.join(differing)}); "
            "use a new --out or the same settings to resume"
        )


def write_run_config(out_dir: Path, config: dict) -> None:
    """Record the run's settings in run.json (first run only). Called once the model has loaded,
    so that a run that failed before predicting anything does not bind --out to its settings."""
    check_run_config(out_dir, config)
    path = out_dir / "run.json"
    if path.exists():
        return
    temporary = out_dir / f"run.json.tmp{os.getpid()}"
    temporary.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    os.replace(temporary, path)


def drop_missing_images(data: SuiteData, images_dir: Path, skip_bad: bool) -> SuiteData:
    """Check that every query's image file exists before a model run starts (a stat per image).
    A missing one is an error naming it, or with `skip_bad` its record is skipped and counted
    in `data.skipped` like a malformed one."""
    missing: dict[int, str] = {}
    exists: dict[str, bool] = {}
    for query in data.queries:
        if query.image not in exists:
            exists[query.image] = (images_dir / query.image).is_file()
        if not exists[query.image]:
            missing.setdefault(query.record, f"image {images_dir / query.image} does not exist")
    if not missing:
        return data
    if not skip_bad:
        first = min(missing)
        raise UserError(f"{len(missing)} record(s) of {data.path} name an image that does not exist "
                        f"(first: record {first}: {missing[first]}); use --skip-bad to skip them")
    queries = [q for q in data.queries if q.record not in missing]
    if not queries:
        raise UserError(f"{data.path}: no record has its image under {images_dir}")
    skipped = sorted(data.skipped + list(missing.items()))
    return replace(data, queries=queries, skipped=skipped)


def run_queries(
    predictor,
    queries: Sequence[EvalQuery],
    images_dir: Path,
    writer: PredictionsWriter,
    phrase_mode: str = "generate",
    progress: bool = True,
    load_image: Callable[[Path], np.ndarray] | None = None,
) -> int:
    """Predict every query not yet done; returns how many were run now."""
    if load_image is None:
        from instructsam_core.images import load_image as _load

        load_image = _load
    todo = [q for q in queries if q.key not in writer.done]
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(queries), initial=len(queries) - len(todo), desc="eval", unit="query", dynamic_ncols=True)
    cached_name, cached_image = None, None
    try:
        for query in todo:
            if query.image != cached_name:
                cached_image = load_image(images_dir / query.image)
                cached_name = query.image
                if cached_image.shape[:2] != (query.height, query.width):
                    raise UserError(
                        f"record {query.record}: image {images_dir / query.image} is "
                        f"{cached_image.shape[0]}x{cached_image.shape[1]}, the data file says "
                        f"{query.height}x{query.width}"
                    )
            phrases = [query.phrase] if phrase_mode == "text" else None
            prediction = predictor.predict(cached_image, query.prompt, phrases=phrases, threshold=0.0)
            instances = [(inst.score, encode_mask(inst.mask)) for inst in prediction.instances]
            writer.write_query(query.record, query.annotation, instances)
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return len(todo)


def shard_queries(queries: Sequence[EvalQuery], shard: ShardSpec) -> list[EvalQuery]:
    return [q for k, q in enumerate(queries) if shard.owns(k)]


def shard_paths(out_dir: Path, count: int) -> list[Path]:
    return [out_dir / shard_file_name(i, count) for i in range(count)]


def shards_complete(out_dir: Path, queries: Sequence[EvalQuery], count: int) -> tuple[bool, list[str]]:
    """Whether every shard file exists and holds a finished marker for each of its queries."""
    problems = []
    for index, path in enumerate(shard_paths(out_dir, count)):
        wanted = {q.key for q in shard_queries(queries, ShardSpec(index, count))}
        if not path.exists():
            problems.append(f"shard {index}: {path.name} missing")
            continue
        done = read_predictions(path, tolerate_truncated_tail=True).done
        if not wanted <= done:
            problems.append(f"shard {index}: {len(wanted - done)} of {len(wanted)} queries unfinished")
    return not problems, problems


def merge_shards(out_dir: Path, queries: Sequence[EvalQuery], count: int, allow_partial: bool = False) -> Path:
    """Merge shard files into predictions.jsonl (refuses unfinished shards unless allowed)."""
    complete, problems = shards_complete(out_dir, queries, count)
    if not complete and not allow_partial:
        raise UserError("cannot merge: " + "; ".join(problems))
    paths = [p for p in shard_paths(out_dir, count) if p.exists()]
    target = out_dir / PREDICTIONS_NAME
    merge_prediction_files(paths, target)
    return target
