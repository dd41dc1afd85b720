"""`instructsam annotate-bag` end to end: bags written with rosbags, annotated, read back.

Every output message is checked against `Predictor.predict` on the recorded frame (the call
`instructsam predict` makes), the COCO JSON through pycocotools, resume after a SIGKILL for
byte equality, and each kind of bad input for a one-line error or a counted skip.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO

from bagmaker import coco, deserialize, files_of, first_scene_phrase, full_mask, mono16, read_bag, write_bag
from instructsam_core.cli import main
from instructsam_core.predictor import Predictor

REPO = Path(__file__).resolve().parents[1]
TWO_TOPICS = {"/front/image_raw": "raw", "/side/image/compressed": "compressed"}


def annotate(*args) -> int:
    return main(["annotate-bag", *(str(a) for a in args), "--no-progress"])


@pytest.fixture(scope="module")
def tiny_predictor(tiny_model_dir):
    return Predictor.from_pretrained(tiny_model_dir, threshold=0.3)


def check_label_image(labels: np.ndarray, instances, masks: list[np.ndarray]) -> None:
    """0 where no mask is; elsewhere the id of an instance covering the pixel with the best score there."""
    covered = np.zeros(labels.shape, bool)
    best = np.full(labels.shape, -1.0)
    for instance, mask in zip(instances, masks):
        covered |= mask
        best = np.where(mask, np.maximum(best, instance.score), best)
    assert np.array_equal(labels > 0, covered)
    for instance, mask in zip(instances, masks):
        owned = labels == instance.id
        assert not (owned & ~mask).any()
        assert np.all(best[owned] == instance.score)


def check_annotated_bag(bag: Path, out: Path, recorded, predictor, instruction: str, phrases, overlay: bool) -> None:
    """Every message of the output against the input and against predict on the same frame."""
    in_types, in_messages = read_bag(bag)
    out_types, out_messages = read_bag(out)
    # The original messages, byte for byte, with their log times and in their order.
    assert [m for m in out_messages if m[0] in in_types] == in_messages
    assert {t: out_types[t] for t in in_types} == in_types
    topics = sorted({r.topic for r in recorded})
    expected_types = {f"{t}/segmentation": "instructsam_ros/msg/InstanceSegmentation" for t in topics}
    expected_types.update({f"{t}/label_image": "sensor_msgs/msg/Image" for t in topics})
    if overlay:
        expected_types.update({f"{t}/overlay": "sensor_msgs/msg/Image" for t in topics})
    assert {t: v for t, v in out_types.items() if t not in in_types} == expected_types
    data = coco(out)
    api = COCO(str(out / "coco.json"))
    annotations = {image["id"]: api.loadAnns(api.getAnnIds(imgIds=[image["id"]])) for image in data["images"]}
    images = {(image["topic"], image["frame_index"]): image for image in data["images"]}
    good = [r for r in recorded if r.rgb is not None]
    assert len(images) == len(good)
    for topic in topics:
        frames = [r for r in good if r.topic == topic]
        results = deserialize(out, f"{topic}/segmentation")
        labels = deserialize(out, f"{topic}/label_image")
        overlays = deserialize(out, f"{topic}/overlay") if overlay else [(r.log_time, None) for r in frames]
        assert [t for t, _ in results] == [t for t, _ in labels] == [t for t, _ in overlays] == [r.log_time for r in frames]
        for (_, result), (_, label), (_, picture), frame in zip(results, labels, overlays, frames):
            height, width = frame.rgb.shape[:2]
            headers = [result.header, label.header, *(i.mask.header for i in result.instances)]
            if picture is not None:
                headers.append(picture.header)
                assert (picture.encoding, picture.height, picture.width) == ("rgb8", height, width)
            for header in headers:
                assert (header.stamp.sec, header.stamp.nanosec, header.frame_id) == (*frame.stamp, frame.frame_id)
            want = predictor.predict(frame.rgb, instruction, phrases=phrases)
            assert (result.height, result.width, result.instruction) == (height, width, want.instruction)
            assert list(result.phrases) == want.phrases
            assert result.instruction_id == 1 and result.model_latency == 0.0 and result.processing_latency == 0.0
            assert len(result.instances) == len(want.instances)
            masks = []
            for got, expected in zip(result.instances, want.instances):
                mask = full_mask(got, height, width)
                assert np.array_equal(mask, expected.mask)
                assert (got.phrase, got.phrase_index) == (expected.phrase, expected.phrase_index)
                assert got.score == np.float32(expected.score)
                assert got.area == expected.mask.sum()
                masks.append(mask)
            ids = [i.id for i in result.instances]
            assert len(set(ids)) == len(ids) and all(0 < i <= 65535 for i in ids)
            assert (label.height, label.width) == (height, width)
            check_label_image(mono16(label), result.instances, masks)
            image = images[(topic, frame.index)]
            assert image["stamp"] == {"sec": frame.stamp[0], "nanosec": frame.stamp[1]}
            assert (image["log_time_ns"], image["frame_id"], image["height"], image["width"]) == (
                frame.log_time, frame.frame_id, height, width)
            anns = sorted(annotations[image["id"]], key=lambda a: a["id"])
            assert len(anns) == len(want.instances)
            for ann, got, expected in zip(anns, result.instances, want.instances):
                assert np.array_equal(api.annToMask(ann).astype(bool), expected.mask)
                assert ann["score"] == expected.score and ann["phrase"] == expected.phrase
                assert api.loadCats(ann["category_id"])[0]["name"] == expected.phrase
                assert ann["bbox"] == [got.box.x_offset, got.box.y_offset, got.box.width, got.box.height]
                assert ann["instance_id"] == got.id and ann["area"] == got.area
                assert ann["stamp"] == image["stamp"]


@pytest.mark.parametrize("storage", ["sqlite3", "mcap"])
def test_tiny_model_annotates_every_frame_of_two_topics(tmp_path, storage, tiny_model_dir, tiny_predictor, capsys):
    bag = tmp_path / "in"
    recorded = write_bag(bag, storage, TWO_TOPICS, frames=5)
    out = tmp_path / "out"
    assert annotate("--bag", bag, "--topics", *TWO_TOPICS, "--instruction", "red circles", "--out", out,
                    "--model", tiny_model_dir, "--overlay", "--batch-size", 1) == 0
    printed = capsys.readouterr().out
    assert "annotated 10 of 10 frames" in printed
    assert sorted(p.name for p in out.iterdir()) == sorted(["metadata.yaml", "coco.json", f"out.{'db3' if storage == 'sqlite3' else 'mcap'}"])
    assert not (tmp_path / "out.partial").exists()
    check_annotated_bag(bag, out, recorded, tiny_predictor, "red circles", None, overlay=True)


def test_a_single_mcap_file_and_fixed_phrases(tmp_path, tiny_model_dir, tiny_predictor):
    bag = tmp_path / "in"
    recorded = write_bag(bag, "mcap", {"/cam/image": "raw"}, frames=3)
    single = tmp_path / "drive.mcap"
    shutil.copy(bag / "in.mcap", single)
    out = tmp_path / "out"
    assert annotate("--bag", single, "--topics", "/cam/image", "--instruction", "find the shapes",
                    "--phrases", "red circles", "blue squares", "--out", out, "--model", tiny_model_dir,
                    "--storage", "sqlite3", "--batch-size", 1) == 0
    assert (out / "out.db3").is_file()
    check_annotated_bag(bag, out, recorded, tiny_predictor, "find the shapes", ["red circles", "blue squares"],
                        overlay=False)


def test_the_inference_layout_option_reaches_every_frame(tmp_path, tiny_model_dir):
    bag = tmp_path / "in"
    recorded = write_bag(bag, "mcap", {"/cam/image": "raw"}, frames=2)
    out = tmp_path / "out"
    assert annotate("--bag", bag, "--topics", "/cam/image", "--instruction", "find the shapes", "--phrases",
                    "red circles", "--out", out, "--model", tiny_model_dir, "--inference-layout", "release",
                    "--threshold", "0", "--batch-size", 2) == 0
    release = Predictor.from_pretrained(tiny_model_dir, threshold=0.0, inference_layout="release")
    check_annotated_bag(bag, out, recorded, release, "find the shapes", ["red circles"], overlay=False)


def test_default_model_on_both_paths_matches_predict(tmp_path):
    """The embedded default model: a bare phrase of an object in the scene (single forward) and
    a reasoning question (generation on every frame)."""
    predictor = Predictor.from_pretrained("default", threshold=0.1)
    bag = tmp_path / "in"
    recorded = write_bag(bag, "mcap", TWO_TOPICS, frames=3, size=(120, 160), seed=3)
    phrase = first_scene_phrase(3)  # the front topic's first frame shows it
    out = tmp_path / "out"
    assert annotate("--bag", bag, "--topics", *TWO_TOPICS, "--instruction", phrase, "--out", out,
                    "--batch-size", 1, "--threshold", 0.1) == 0
    check_annotated_bag(bag, out, recorded, predictor, phrase, None, overlay=False)
    assert sum(len(r.instances) for _, r in deserialize(out, "/front/image_raw/segmentation")) > 0
    question = "What could roll down a slope? Please output the segmentation mask."
    out = tmp_path / "asked"
    assert annotate("--bag", bag, "--topics", "/front/image_raw", "--instruction", question, "--out", out,
                    "--batch-size", 1, "--threshold", 0.1) == 0
    front = [r for r in recorded if r.topic == "/front/image_raw"]
    check_annotated_bag(bag, out, front, predictor, question, None, overlay=False)


def test_time_range_and_every_nth_frame(tmp_path, tiny_model_dir):
    bag = tmp_path / "in"
    recorded = write_bag(bag, "sqlite3", {"/cam/image": "raw"}, frames=8)
    out = tmp_path / "out"
    # Frames at 0..7 s; [1.5 s, 6 s) holds frames 2..5; every 2nd of those: 2 and 4.
    assert annotate("--bag", bag, "--topics", "/cam/image", "--instruction", "red circles", "--out", out,
                    "--model", tiny_model_dir, "--start", 1.5, "--end", 6, "--every", 2) == 0
    times = [t for t, _ in deserialize(out, "/cam/image/segmentation")]
    assert times == [recorded[2].log_time, recorded[4].log_time]
    assert [image["frame_index"] for image in coco(out)["images"]] == [0, 2]  # index within the range
    assert len(deserialize(out, "/cam/image")) == 8  # every original message is kept


def test_bad_frames_are_skipped_and_counted(tmp_path, tiny_model_dir, tiny_predictor, capsys):
    bag = tmp_path / "in"
    recorded = write_bag(bag, "mcap", {"/cam/image": "raw"}, frames=6, bad={"/cam/image": {1, 4}},
                         garbage={"/cam/image": {2}})
    out = tmp_path / "out"
    assert annotate("--bag", bag, "--topics", "/cam/image", "--instruction", "red circles", "--out", out,
                    "--model", tiny_model_dir) == 0
    printed = capsys.readouterr().out
    assert "annotated 3 of 6 frames: /cam/image 3 (+3 skipped)" in printed
    assert "skipped 3 frames: unsupported encoding 'nv12': 2; message could not be deserialised: 1" in printed
    check_annotated_bag(bag, out, recorded, tiny_predictor, "red circles", None, overlay=False)


def test_batches_change_only_float_rounding(tmp_path):
    """--batch-size 3 against 1 (exactly predict, above) on the default model: same frames, phrases
    and instances; scores within 1e-5, masks within a few border pixels."""
    bag = tmp_path / "in"
    write_bag(bag, "sqlite3", {"/cam/image": "raw"}, frames=6, size=(120, 160), seed=5)
    results = {}
    for size in (1, 3):
        out = tmp_path / f"batch{size}"
        assert annotate("--bag", bag, "--topics", "/cam/image", "--instruction", first_scene_phrase(5),
                        "--out", out, "--batch-size", size, "--threshold", "0.1") == 0
        results[size] = deserialize(out, "/cam/image/segmentation")
    assert [t for t, _ in results[1]] == [t for t, _ in results[3]]
    assert sum(len(m.instances) for _, m in results[1]) > 0
    for (_, single), (_, batched) in zip(results[1], results[3]):
        assert list(single.phrases) == list(batched.phrases)
        assert len(single.instances) == len(batched.instances)
        for a, b in zip(single.instances, batched.instances):
            assert a.phrase == b.phrase and abs(a.score - b.score) < 1e-5
            mask_a, mask_b = full_mask(a, 120, 160), full_mask(b, 120, 160)
            assert (mask_a != mask_b).sum() <= max(3, 0.01 * mask_a.sum())


@pytest.mark.parametrize("storage", ["sqlite3", "mcap"])
def test_reader_and_writer_threads_write_the_same_bytes(tmp_path, tiny_model_dir, storage):
    bag = tmp_path / "in"
    write_bag(bag, storage, TWO_TOPICS, frames=7)
    outputs = {}
    for mode in ("on", "off"):
        out = tmp_path / mode / "out"
        assert annotate("--bag", bag, "--topics", *TWO_TOPICS, "--instruction", "red circles", "--out", out,
                        "--model", tiny_model_dir, "--overlay", "--batch-size", 3, "--io-threads", mode) == 0
        outputs[mode] = files_of(out)
    assert outputs["on"] == outputs["off"]


@pytest.mark.parametrize("device, torch_threads, cores, expected", [
    ("cpu", 4, 4, False),  # the model takes every core: threads would take its CPU
    ("cpu", 1, 2, True),  # OMP_NUM_THREADS=1 on two cores: one core is idle
    ("cpu", 8, 4, False),
    ("cuda", 4, 4, True),  # the model runs on the GPU: the CPU is idle
])
def test_auto_io_threads_only_when_the_model_leaves_a_core_idle(monkeypatch, tmp_path, device, torch_threads, cores,
                                                                expected):
    from instructsam_ros.bags.options import AnnotateOptions

    monkeypatch.setattr(torch, "get_num_threads", lambda: torch_threads)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cores)))
    options = AnnotateOptions(bag=tmp_path / "in", out=tmp_path / "out", topics=["/camera"], instruction="cups",
                              device=device)
    assert options.use_threads is expected
    for forced in (True, False):
        options.threads = forced
        assert options.use_threads is forced


def _command(bag: Path, out: Path, model: Path) -> list[str]:
    return [sys.executable, "-m", "instructsam_core.cli", "annotate-bag", "--bag", str(bag), "--topics", *TWO_TOPICS,
            "--instruction", "red circles", "--out", str(out), "--model", str(model), "--batch-size", "2",
            "--overlay", "--no-progress"]


def test_killed_run_resumes_to_the_same_bytes(tmp_path, tiny_model_dir):
    bag = tmp_path / "in"
    frames = 20  # per topic: 20 batches of 2 in all, so the kill after 3 leaves most to do
    write_bag(bag, "sqlite3", TWO_TOPICS, frames=frames, size=(240, 320))
    out = tmp_path / "out"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    subprocess.run(_command(bag, out, tiny_model_dir), check=True, env=env, capture_output=True, cwd=REPO)
    reference = files_of(out)
    shutil.rmtree(out)

    process = subprocess.Popen(_command(bag, out, tiny_model_dir), env=env, cwd=REPO,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = tmp_path / "out.partial" / "frames.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if state.exists() and state.read_bytes().count(b"\n") >= 3:
            break
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    lines = state.read_bytes().splitlines(keepends=True)
    assert 3 <= len(lines) < frames, "the run was not killed half-way"
    assert not out.exists()  # nothing that looks like a finished output
    # A kill during a write leaves half a line: drop the last batch and keep half of its line.
    state.write_bytes(b"".join(lines[:-1]) + lines[-1][: len(lines[-1]) // 2])

    finished = subprocess.run(_command(bag, out, tiny_model_dir), env=env, cwd=REPO, capture_output=True, text=True)
    assert finished.returncode == 0, finished.stderr
    resumed = 2 * (len(lines) - 1)
    assert f"resuming: {resumed} of {2 * frames} frames were done by an earlier run" in finished.stdout
    assert files_of(out) == reference
    assert not (tmp_path / "out.partial").exists()


def test_annotate_bag_runs_without_any_ros_python_package(tmp_path, tiny_model_dir):
    """rclpy, the message packages and our generated interfaces made unimportable."""
    bag = tmp_path / "in"
    write_bag(bag, "mcap", TWO_TOPICS, frames=2)
    out = tmp_path / "out"
    blocker = (
        "import sys\n"
        "class NoRos:\n"
        "    blocked = ('rclpy', 'sensor_msgs', 'std_msgs', 'builtin_interfaces', 'rosidl_runtime_py',\n"
        "               'rosidl_parser', 'instructsam_ros.msg', 'instructsam_ros.srv', 'instructsam_ros.interfaces')\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if any(name == b or name.startswith(b + '.') for b in self.blocked):\n"
        "            raise ImportError(f'{name} is blocked in this test')\n"
        "sys.meta_path.insert(0, NoRos())\n"
        "from instructsam_core.cli import main\n"
        f"code = main({['annotate-bag', '--bag', str(bag), '--topics', *TWO_TOPICS, '--instruction', 'red circles', '--out', str(out), '--model', str(tiny_model_dir), '--overlay', '--no-progress']!r})\n"
        "leaked = [m for m in sys.modules if m.split('.')[0] in ('rclpy', 'sensor_msgs', 'std_msgs')]\n"
        "assert not leaked, leaked\n"
        "sys.exit(code)\n"
    )
    result = subprocess.run([sys.executable, "-c", blocker], cwd=REPO, capture_output=True, text=True,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert result.returncode == 0, result.stderr
    assert "annotated 4 of 4 frames" in result.stdout
    assert len(deserialize(out, "/side/image/compressed/overlay")) == 2


# ----------------------------------------------------------------------------- bad input


def _fails(capsys, *args) -> str:
    """Runs annotate-bag, expects exit 2 and one line on stderr; returns that line."""
    code = annotate(*args)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("instructsam annotate-bag: error: "), err
    assert "Traceback" not in err
    return err


@pytest.fixture()
def good_bag(tmp_path):
    bag = tmp_path / "in"
    write_bag(bag, "mcap", TWO_TOPICS, frames=3)
    return bag


def _args(bag: Path, out: Path, model: Path, *extra) -> list:
    return ["--bag", bag, "--topics", "/front/image_raw", "--instruction", "red circles", "--out", out,
            "--model", model, *extra]


def test_missing_and_non_bag_paths(tmp_path, tiny_model_dir, capsys):
    out = tmp_path / "out"
    assert "does not exist" in _fails(capsys, *_args(tmp_path / "nothing", out, tiny_model_dir))
    (tmp_path / "notes.txt").write_text("hello")
    assert "is not a bag" in _fails(capsys, *_args(tmp_path / "notes.txt", out, tiny_model_dir))
    (tmp_path / "folder").mkdir()
    assert "no metadata.yaml" in _fails(capsys, *_args(tmp_path / "folder", out, tiny_model_dir))
    assert not out.exists() and not (tmp_path / "out.partial").exists()


@pytest.mark.parametrize("storage", ["sqlite3", "mcap"])
def test_corrupt_and_truncated_bags(tmp_path, tiny_model_dir, capsys, storage):
    bag = tmp_path / "in"
    write_bag(bag, storage, TWO_TOPICS, frames=4, size=(64, 96))
    data_file = next(p for p in bag.iterdir() if p.name != "metadata.yaml")
    original = data_file.read_bytes()
    out = tmp_path / "out"
    # The last chunk cut off, as when a recording is killed.
    data_file.write_bytes(original[: int(len(original) * 0.8)])
    error = _fails(capsys, *_args(bag, out, tiny_model_dir))
    assert "cannot read bag" in error and ("truncated" in error or "corrupt" in error)
    data_file.write_bytes(b"\x00" * 4096)
    assert "cannot read bag" in _fails(capsys, *_args(bag, out, tiny_model_dir))
    assert not out.exists() and not (tmp_path / "out.partial").exists()


def test_unknown_topic_lists_the_image_topics(good_bag, tmp_path, tiny_model_dir, capsys):
    error = _fails(capsys, "--bag", good_bag, "--topics", "/camera/color", "--instruction", "cups",
                   "--out", tmp_path / "out", "--model", tiny_model_dir)
    assert "no topic /camera/color" in error
    assert "/front/image_raw (sensor_msgs/msg/Image, 3 messages)" in error
    assert "/side/image/compressed (sensor_msgs/msg/CompressedImage, 3 messages)" in error


def test_topic_of_another_type(good_bag, tmp_path, tiny_model_dir, capsys):
    error = _fails(capsys, "--bag", good_bag, "--topics", "/chatter", "--instruction", "cups",
                   "--out", tmp_path / "out", "--model", tiny_model_dir)
    assert "/chatter carries std_msgs/msg/String" in error and "/front/image_raw" in error


@pytest.mark.parametrize("extra, words", [
    (["--threshold", "1.5"], "--threshold"),
    (["--every", "0"], "--every"),
    (["--batch-size", "0"], "--batch-size"),
    (["--start", "4", "--end", "2"], "--end"),
    (["--start", "-1"], "--start"),
    (["--start", "100"], "no frames"),
    (["--device", "gpu0"], "unknown device"),
])
def test_bad_arguments(good_bag, tmp_path, tiny_model_dir, capsys, extra, words):
    assert words in _fails(capsys, *_args(good_bag, tmp_path / "out", tiny_model_dir, *extra))
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_model_that_cannot_load_leaves_nothing_behind(good_bag, tmp_path, tiny_model_dir, capsys):
    """The model loads only once frames need it (after the bag and topics were checked)."""
    error = _fails(capsys, *_args(good_bag, tmp_path / "out", tiny_model_dir, "--device", "cuda"))
    assert "no CUDA GPU" in error
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]


def test_output_is_never_overwritten_without_overwrite(good_bag, tmp_path, tiny_model_dir, capsys):
    out = tmp_path / "out"
    assert annotate(*_args(good_bag, out, tiny_model_dir)) == 0
    before = files_of(out)
    assert "pass --overwrite" in _fails(capsys, *_args(good_bag, out, tiny_model_dir, "--every", "2"))
    assert files_of(out) == before
    assert annotate(*_args(good_bag, out, tiny_model_dir, "--every", "2", "--overwrite")) == 0
    assert len(coco(out)["images"]) == 2
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "keep.txt").write_text("mine")
    assert "not a rosbag2 directory" in _fails(capsys, *_args(good_bag, plain, tiny_model_dir, "--overwrite"))
    assert (plain / "keep.txt").read_text() == "mine"
    assert "outside the input bag" in _fails(capsys, *_args(good_bag, good_bag / "out", tiny_model_dir))


def test_a_partial_run_of_other_settings_is_kept_unless_overwrite(good_bag, tmp_path, tiny_model_dir, capsys):
    out = tmp_path / "out"
    partial = tmp_path / "out.partial"
    partial.mkdir()
    (partial / "run.json").write_text('{"threshold": 0.9}\n')
    (partial / "frames.jsonl").write_text('{"topic": 0, "batch": 0, "frames": []}\n')
    error = _fails(capsys, *_args(good_bag, out, tiny_model_dir))
    assert "holds a run of other settings" in error and "--overwrite" in error
    assert annotate(*_args(good_bag, out, tiny_model_dir, "--overwrite")) == 0
    assert len(coco(out)["images"]) == 3 and not partial.exists()
