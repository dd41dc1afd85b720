"""`instructsam eval` end to end: scoring-only mode, tiny-model runs, resume and sharding."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from instructsam_core.cli import main as cli_main

RECORDS = 3  # records of the synthetic benchmark used by the model runs


def _done_lines(path: Path) -> int:
    if not path.exists():
        return 0
    return sum(1 for line in path.read_text().splitlines() if '"done":true' in line)


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Tiny models gain nothing from 2 threads, and on a busy 2-core machine intra-op threads
    wait on each other (measured: 40 ms -> 3 s per query); the runs here use one."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("evalcli")
    assert cli_main(["synth", "--out", str(root / "data"), "--n", "12", "--seed", "1", "--split", "val", "--quiet"]) == 0
    assert cli_main(["tiny", "--out", str(root / "model")]) == 0
    return root


def _model_args(root: Path, out: Path, *extra: str) -> list[str]:
    return [
        "eval", "--suite", "inst2seg", "--data", str(root / "data" / "inst2seg.json"),
        "--images", str(root / "data"), "--model", str(root / "model"), "--out", str(out),
        "--limit", str(RECORDS), "--phrase-mode", "text", "--quiet", *extra,
    ]


@pytest.fixture(scope="module")
def reference_run(workspace) -> Path:
    """An uninterrupted single-process run that the other runs must reproduce."""
    out = workspace / "reference"
    assert cli_main(_model_args(workspace, out)) == 0
    return out


# ----------------------------------------------------------------------------- scoring only


def _gt_predictions(data_file: Path, out: Path, extra: list[dict] | None = None) -> int:
    """Write every GT instance as a prediction (score 0.9); returns the number of GT instances."""
    records = json.loads(data_file.read_text())
    count = 0
    with open(out, "w") as handle:
        for i, record in enumerate(records):
            for j, ann in enumerate(record["annotation"]):
                for mask in ann.get("mask", []):
                    handle.write(json.dumps({"record": i, "annotation": j, "score": 0.9, "segmentation": mask}) + "\n")
                    count += 1
        for line in extra or []:
            handle.write(json.dumps(line) + "\n")
    return count


def test_scoring_gt_as_predictions_gives_perfect_scores(workspace, tmp_path):
    data = workspace / "data" / "inst2seg.json"
    preds = tmp_path / "gt.jsonl"
    num_gt = _gt_predictions(data, preds)
    out = tmp_path / "scored"
    assert cli_main(["eval", "--suite", "inst2seg", "--data", str(data), "--predictions", str(preds),
                     "--out", str(out), "--images", str(workspace / "data"), "--quiet"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["mAP"] == pytest.approx(1.0) and metrics["AP50"] == pytest.approx(1.0)
    assert metrics["giou"] == pytest.approx(1.0) and metrics["ciou"] == pytest.approx(1.0)
    assert metrics["num_gt_instances"] == num_gt == metrics["num_pred_instances"]
    assert set(metrics["by_num_objects"]) == {"0", "1", ">=2"}
    for key in ("giou", "ciou", "mAP", "AP50", "AP75", "num_gt_instances", "num_pred_instances"):
        assert key in metrics["by_num_objects"]["1"]
    assert metrics["coco"]["AP"] == pytest.approx(1.0)
    assert "| all |" in (out / "metrics.md").read_text()
    assert len(list((out / "overlays").glob("*.png"))) == 6


def test_scoring_one_false_positive_on_a_no_target_query(workspace, tmp_path):
    data = workspace / "data" / "inst2seg.json"
    records = json.loads(data.read_text())
    i, j = next((i, j) for i, r in enumerate(records) for j, a in enumerate(r["annotation"]) if "mask" not in a)
    some_mask = next(a["mask"][0] for r in records for a in r["annotation"] if "mask" in a and r is records[i])
    fp = {"record": i, "annotation": j, "score": 0.95, "segmentation": some_mask}
    preds = tmp_path / "fp.jsonl"
    n = _gt_predictions(data, preds, [fp])
    out = tmp_path / "scored"
    assert cli_main(["eval", "--suite", "inst2seg", "--data", str(data), "--predictions", str(preds),
                     "--out", str(out), "--quiet"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    # The FP ranks first: precision k/(k+1) at recall k/n, envelope n/(n+1) everywhere.
    assert metrics["AP50"] == pytest.approx(n / (n + 1))
    assert metrics["mAP"] == pytest.approx(n / (n + 1))
    queries = sum(len(r["annotation"]) for r in records)
    assert metrics["giou"] == pytest.approx((queries - 1) / queries)
    no_target = metrics["by_num_objects"]["0"]
    assert no_target["num_pred_instances"] == 1 and no_target["num_gt_instances"] == 0
    # the release's files hold 0.0 for the AP of the no-target group, not an empty value
    assert (no_target["mAP"], no_target["AP50"], no_target["AP75"]) == (0.0, 0.0, 0.0)
    report = (out / "metrics.md").read_text()
    row = next(line for line in report.splitlines() if line.startswith("| GT count 0 |"))
    assert row.split("|")[5:8] == [" 0.0 ", " 0.0 ", " 0.0 "]
    assert "group without targets (GT count 0) is 0 by the release's convention" in report
    # With a threshold above the FP's score nothing is kept at all.
    assert cli_main(["eval", "--suite", "inst2seg", "--data", str(data), "--predictions", str(preds),
                     "--out", str(out), "--threshold", "0.96", "--quiet"]) == 0
    assert json.loads((out / "metrics.json").read_text())["num_pred_instances"] == 0
    # --limit scores the first records only; predictions of later records are left out.
    assert cli_main(["eval", "--suite", "inst2seg", "--data", str(data), "--predictions", str(preds),
                     "--out", str(out), "--limit", str(i + 1), "--quiet"]) == 0
    limited = json.loads((out / "metrics.json").read_text())
    assert limited["num_records"] == i + 1
    assert limited["num_gt_instances"] == sum(len(a.get("mask", [])) for r in records[: i + 1] for a in r["annotation"])


def test_scoring_refuses_predictions_of_another_file(workspace, tmp_path, capsys):
    preds = tmp_path / "p.jsonl"
    preds.write_text(json.dumps({"record": 999, "annotation": 0, "score": 0.5,
                                 "segmentation": {"size": [1, 1], "counts": [1]}}) + "\n")
    code = cli_main(["eval", "--suite", "inst2seg", "--data", str(workspace / "data" / "inst2seg.json"),
                     "--predictions", str(preds), "--out", str(tmp_path / "o")])
    assert code == 2 and "record 999" in capsys.readouterr().err


# ----------------------------------------------------------------------------- model runs


def test_default_generation_path_end_to_end(workspace, tmp_path):
    out = tmp_path / "gen"
    args = _model_args(workspace, out)
    args[args.index("text")] = "generate"
    args[args.index("--limit") + 1] = "1"
    assert cli_main([*args, "--max-new-tokens", "12"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    records = json.loads((workspace / "data" / "inst2seg.json").read_text())[:1]
    queries = sum(len(r["annotation"]) for r in records)
    assert metrics["num_queries"] == queries == _done_lines(out / "predictions.jsonl")
    for key in ("giou", "ciou"):
        assert 0.0 <= metrics[key] <= 1.0


def test_model_run_writes_every_query(reference_run, workspace):
    metrics = json.loads((reference_run / "metrics.json").read_text())
    records = json.loads((workspace / "data" / "inst2seg.json").read_text())[:RECORDS]
    queries = sum(len(r["annotation"]) for r in records)
    lines = [json.loads(line) for line in _lines(reference_run / "predictions.jsonl")]
    markers = [line for line in lines if line.get("done")]
    instances = [line for line in lines if not line.get("done")]
    assert len(markers) == queries == metrics["num_queries"]
    # Text mode, threshold 0: one phrase -> all 10 queries of the bank, before thresholding.
    assert all(m["num_instances"] == 10 for m in markers) and len(instances) == 10 * queries
    assert all(0.0 <= line["score"] <= 1.0 for line in instances)
    for key in ("giou", "ciou", "mAP", "AP50", "AP75"):
        assert metrics[key] is None or 0.0 <= metrics[key] <= 1.0
    kept = sum(1 for line in instances if line["score"] > 0.3)
    assert metrics["num_pred_instances"] == kept
    assert (reference_run / "metrics.md").exists() and list((reference_run / "overlays").glob("*.png"))


def test_interrupted_run_resumes_without_duplicates(workspace, reference_run, tmp_path):
    out = tmp_path / "interrupted"
    env = dict(os.environ)
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1]) + os.pathsep + env.get("PYTHONPATH", "")
    process = subprocess.Popen(
        [sys.executable, "-m", "instructsam_core.cli", *_model_args(workspace, out), "--threads", "1"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    predictions = out / "predictions.jsonl"
    deadline = time.monotonic() + 120
    try:
        while _done_lines(predictions) < 1 and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait()
    total = _done_lines(reference_run / "predictions.jsonl")
    written = _done_lines(predictions)
    assert 1 <= written < total, "the run was not interrupted part-way"
    with open(predictions, "a") as handle:  # and a write cut short
        handle.write('{"record": 3, "annotation": 0, "score": 0.5, "segm')
    assert cli_main(_model_args(workspace, out)) == 0
    lines = _lines(predictions)
    assert len(lines) == len(set(lines))  # no duplicate line
    assert sorted(lines) == sorted(_lines(reference_run / "predictions.jsonl"))
    ours = json.loads((out / "metrics.json").read_text())
    reference = json.loads((reference_run / "metrics.json").read_text())
    ours.pop("data"), reference.pop("data")
    assert ours == reference


def test_sharded_run_merges_to_the_same_result(workspace, reference_run, tmp_path, monkeypatch, capsys):
    out = tmp_path / "sharded"
    assert cli_main(_model_args(workspace, out, "--shard", "0", "--num-shards", "2")) == 0
    assert "waiting for" in capsys.readouterr().out
    assert not (out / "metrics.json").exists()
    # The second shard takes its rank from torchrun's environment variables and merges.
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert cli_main(_model_args(workspace, out)) == 0
    assert (out / "predictions.shard001-of-002.jsonl").exists()
    assert sorted(_lines(out / "predictions.jsonl")) == sorted(_lines(reference_run / "predictions.jsonl"))
    ours = json.loads((out / "metrics.json").read_text())
    reference = json.loads((reference_run / "metrics.json").read_text())
    assert ours["mAP"] == reference["mAP"] and ours["giou"] == reference["giou"]
    # An explicit --merge re-scores from the shard files without a model.
    monkeypatch.delenv("RANK")
    monkeypatch.delenv("WORLD_SIZE")
    (out / "predictions.jsonl").unlink()
    assert cli_main(["eval", "--suite", "inst2seg", "--data", str(workspace / "data" / "inst2seg.json"),
                     "--out", str(out), "--merge", "--limit", str(RECORDS), "--quiet"]) == 0
    assert json.loads((out / "metrics.json").read_text())["mAP"] == reference["mAP"]


def test_resume_with_other_settings_is_refused(workspace, reference_run, capsys):
    args = _model_args(workspace, reference_run)
    args[args.index("--limit") + 1] = "2"
    assert cli_main(args) == 2
    assert "different settings (limit)" in capsys.readouterr().err


def test_the_inference_layout_is_a_setting_of_the_run(workspace, reference_run, tmp_path, capsys):
    assert json.loads((reference_run / "run.json").read_text())["inference_layout"] is None  # the model's own
    assert cli_main(_model_args(workspace, reference_run, "--inference-layout", "trained")) == 2
    assert "different settings (inference_layout)" in capsys.readouterr().err
    out = tmp_path / "release"
    assert cli_main(_model_args(workspace, out, "--inference-layout", "release")) == 0
    assert json.loads((out / "run.json").read_text())["inference_layout"] == "release"
    scores = [[json.loads(line)["score"] for line in _lines(run / "predictions.jsonl") if '"score"' in line]
              for run in (reference_run, out)]
    assert len(scores[0]) == len(scores[1]) and scores[0] != scores[1]  # the tiny model was written "trained"


def test_bad_cli_input_is_one_line_errors(workspace, tmp_path, capsys):
    base = ["eval", "--suite", "inst2seg", "--data", str(workspace / "data" / "inst2seg.json"), "--out", str(tmp_path / "o")]
    assert cli_main([*base, "--model", str(workspace / "model")]) == 2  # no --images
    assert "--images" in capsys.readouterr().err
    assert cli_main([*base, "--model", str(tmp_path / "nope"), "--images", str(workspace / "data")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert cli_main([*base, "--predictions", str(tmp_path / "none.jsonl")]) == 2
    assert cli_main([*base, "--predictions", str(tmp_path / "none.jsonl"), "--threshold", "1.5"]) == 2
    assert "--threshold" in capsys.readouterr().err
    assert cli_main([*base, "--merge", "--num-shards", "2"]) == 2
    assert "cannot merge" in capsys.readouterr().err


def test_a_model_that_fails_to_load_does_not_bind_out(workspace, tmp_path, capsys):
    broken = tmp_path / "broken_model"
    shutil.copytree(workspace / "model", broken)
    for weights in broken.glob("*.safetensors"):
        weights.unlink()
    out = tmp_path / "run"
    args = _model_args(workspace, out)
    args[args.index("--model") + 1] = str(broken)
    assert cli_main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert not (out / "run.json").exists()
    # the corrected command, into the same --out, runs
    assert cli_main(_model_args(workspace, out)) == 0
    assert json.loads((out / "run.json").read_text())["model"] == str((workspace / "model").resolve())
    assert (out / "metrics.json").exists()


def test_records_whose_image_is_missing(workspace, tmp_path, capsys):
    images = tmp_path / "images_dir"
    shutil.copytree(workspace / "data", images)
    records = json.loads((workspace / "data" / "inst2seg.json").read_text())[:RECORDS]
    (images / records[1]["image"]).unlink()
    out = tmp_path / "run"
    args = _model_args(workspace, out)
    args[args.index("--images") + 1] = str(images)
    # without --skip-bad: one line naming the image, before any model work or run.json
    assert cli_main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(images / records[1]["image"]) in err and "--skip-bad" in err
    assert not (out / "run.json").exists()
    # with --skip-bad: the record is skipped, counted and not predicted; the others are
    assert cli_main([*args, "--skip-bad"]) == 0
    assert "skipped record 1: image" in capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["skipped_records"] == 1 and metrics["num_records"] == RECORDS - 1
    predicted = {json.loads(line)["record"] for line in _lines(out / "predictions.jsonl")}
    assert predicted == {0, 2}
    assert metrics["num_queries"] == sum(len(records[i]["annotation"]) for i in (0, 2))
