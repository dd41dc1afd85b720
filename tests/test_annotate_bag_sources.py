"""annotate-bag never loses a message: bags from a second writer (the official `mcap` and
`mcap-ros2-support` libraries) beside a recorder's metadata.yaml, a QoS that differs between
the YAML and the file, split recordings, a bare file, and every way the bag's indexes can
disagree with its files (a one-line error naming topic and counts, exit 2, nothing written).

The expected messages are what `mcap`'s own reader finds in the files."""
from __future__ import annotations

import sqlite3
from collections import Counter
from pathlib import Path

import pytest
import yaml
from mcap.writer import IndexType
from rosbags.highlevel import AnyReader
from rosbags.typesys import Stores, get_typestore

from bagmaker import BASE_NS, coco, deserialize, read_bag, write_bag
from instructsam_core.cli import main
from instructsam_ros.bags.summary import Summary, format_summary
from mcapmaker import CAMERA, DESCRIPTION, RECORDED_QOS, TF, messages_of, qos, recorder_metadata, rewrite, write_mcap

COUNTS = {DESCRIPTION: 1, CAMERA: 20, TF: 30}  # 51 messages, as in the issue


def annotate(bag: Path, out: Path, model: Path, *extra) -> int:
    return main(["annotate-bag", "--bag", str(bag), "--topics", CAMERA, "--instruction", "red circles",
                 "--out", str(out), "--model", str(model), "--no-progress", *map(str, extra)])


def _fails(capsys, *args) -> str:
    code = annotate(*args)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("instructsam annotate-bag: error: "), err
    return err


def recording(tmp_path: Path, files: int = 1) -> tuple[Path, list]:
    """A bag directory: MCAP file(s) from mcap-ros2-support, metadata.yaml as Jazzy's recorder
    writes it (QoS listed there, none stored in the file)."""
    bag = tmp_path / "rec"
    bag.mkdir()
    names = [f"rec_{k}.mcap" for k in range(files)]
    frames = write_mcap([bag / name for name in names])
    recorder_metadata(bag, names, COUNTS, RECORDED_QOS)
    return bag, frames


def check_everything_copied(inputs: list[Path], out: Path, frames) -> None:
    """Every input message byte for byte at its log time, and every frame annotated."""
    expected = messages_of(inputs)
    assert Counter(topic for topic, _, _ in expected) == Counter(COUNTS)
    _, written = read_bag(out)
    assert sorted(m for m in written if m[0] in COUNTS) == sorted(expected)
    segmentations = deserialize(out, f"{CAMERA}/segmentation")
    assert [t for t, _ in segmentations] == [f.log_time for f in frames]
    assert [(s.header.stamp.sec, s.header.stamp.nanosec) for _, s in segmentations] == [f.stamp for f in frames]
    assert [(i["frame_index"], i["height"], i["width"]) for i in coco(out)["images"]] == [
        (f.index, *f.rgb.shape[:2]) for f in frames]


def listed_qos(out: Path) -> dict[str, list]:
    info = yaml.safe_load((out / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
    return {t["topic_metadata"]["name"]: t["topic_metadata"]["offered_qos_profiles"]
            for t in info["topics_with_message_count"]}


def test_an_mcap_ros2_file_beside_a_recorders_metadata_loses_nothing(tmp_path, tiny_model_dir, capsys):
    bag, frames = recording(tmp_path)
    # The trap: rosbags matches the file's channels to the YAML's topics by QoS and finds none.
    with AnyReader([bag]) as reader:
        assert sum(1 for _ in reader.messages()) == 0
    out = tmp_path / "out"
    assert annotate(bag, out, tiny_model_dir) == 0
    printed = capsys.readouterr().out
    assert "annotated 20 of 20 frames" in printed and "51 original + 40 new messages" in printed
    check_everything_copied([bag / "rec_0.mcap"], out, frames)
    # The QoS `ros2 bag play` would offer (metadata.yaml's) goes on with each topic.
    assert {t: listed_qos(out)[t] for t in COUNTS} == {t: RECORDED_QOS[t] for t in COUNTS}


def test_metadata_yaml_type_hashes_carry_over(tmp_path, tiny_model_dir):
    """The file's channels carry no hash (mcap-ros2-support); the recorder's YAML does."""
    bag, _ = recording(tmp_path)
    listed = "RIHS01_" + "ab" * 32
    recorder_metadata(bag, ["rec_0.mcap"], COUNTS, RECORDED_QOS, hashes={TF: listed})
    out = tmp_path / "out"
    assert annotate(bag, out, tiny_model_dir) == 0
    info = yaml.safe_load((out / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
    hashes = {t["topic_metadata"]["name"]: t["topic_metadata"]["type_description_hash"]
              for t in info["topics_with_message_count"]}
    assert hashes[TF] == listed and hashes[CAMERA].startswith("RIHS01_") and hashes[CAMERA] != listed


def test_only_tf_qos_differing_keeps_every_tf_message(tmp_path, tiny_model_dir):
    bag, frames = recording(tmp_path)
    stored = dict(RECORDED_QOS, **{TF: [qos(10, reliability="best_effort")]})
    rewrite(bag / "rec_0.mcap", tmp_path / "qos.mcap", stored)
    (tmp_path / "qos.mcap").replace(bag / "rec_0.mcap")
    with AnyReader([bag]) as reader:  # rosbags alone: /tf gone, the other 21 kept
        assert Counter(c.topic for c, _, _ in reader.messages()) == {DESCRIPTION: 1, CAMERA: 20}
    out = tmp_path / "out"
    assert annotate(bag, out, tiny_model_dir) == 0
    check_everything_copied([bag / "rec_0.mcap"], out, frames)
    assert listed_qos(out)[TF] == RECORDED_QOS[TF]


def test_a_split_recording_and_a_bare_file(tmp_path, tiny_model_dir):
    bag, frames = recording(tmp_path, files=2)
    out = tmp_path / "out"
    assert annotate(bag, out, tiny_model_dir) == 0
    check_everything_copied([bag / "rec_0.mcap", bag / "rec_1.mcap"], out, frames)
    # One file alone, no metadata.yaml: the file's channels, and Humble's format (nothing says otherwise).
    single = tmp_path / "single.mcap"
    frames = write_mcap([single])
    out = tmp_path / "out_single"
    assert annotate(single, out, tiny_model_dir) == 0
    check_everything_copied([single], out, frames)
    assert yaml.safe_load((out / "metadata.yaml").read_text())["rosbag2_bagfile_information"]["version"] == 5


def test_chunks_without_message_indexes_are_scanned(tmp_path, tiny_model_dir):
    bag, frames = recording(tmp_path)
    rewrite(bag / "rec_0.mcap", tmp_path / "plain.mcap", RECORDED_QOS, index_types=IndexType.CHUNK)
    (tmp_path / "plain.mcap").replace(bag / "rec_0.mcap")
    out = tmp_path / "out"
    assert annotate(bag, out, tiny_model_dir) == 0
    check_everything_copied([bag / "rec_0.mcap"], out, frames)


def test_metadata_listing_more_messages_than_the_files_hold(tmp_path, tiny_model_dir, capsys):
    bag, _ = recording(tmp_path)
    recorder_metadata(bag, ["rec_0.mcap"], dict(COUNTS, **{TF: 40}), RECORDED_QOS)
    error = _fails(capsys, bag, tmp_path / "out", tiny_model_dir)
    assert "lists 40 messages on /tf" in error and "hold 30" in error
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rec"]


def test_a_db3_with_messages_on_no_topic(tmp_path, tiny_model_dir, capsys):
    bag = tmp_path / "in"
    write_bag(bag, "sqlite3", {CAMERA: "raw"}, frames=3)
    with sqlite3.connect(bag / "in.db3") as db:
        db.execute("INSERT INTO messages (topic_id, timestamp, data) VALUES (99, 1, x'00')")
    error = _fails(capsys, bag, tmp_path / "out", tiny_model_dir)
    assert "in.db3" in error and "holds 7 messages, only 6 of them on a topic" in error


def test_messages_the_reader_drops_stop_the_run(tmp_path, tiny_model_dir, capsys, monkeypatch):
    """The last guard: what reaches the output is counted against the files' index."""
    from instructsam_ros.bags import source

    bag, _ = recording(tmp_path)
    original = source.InputBag._file_messages
    LATE = BASE_NS + 10**9  # the last second of /tf

    def dropping(self, *args):
        yield from (m for m in original(self, *args) if not (m[0].topic == TF and m[1] > LATE))

    monkeypatch.setattr(source.InputBag, "_file_messages", dropping)
    dropped = sum(1 for topic, t, _ in messages_of([bag / "rec_0.mcap"]) if topic == TF and t > LATE)
    assert dropped > 0
    error = _fails(capsys, bag, tmp_path / "out", tiny_model_dir)
    assert f"read {30 - dropped} of the 30 messages" in error and "on /tf" in error
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rec"]


def test_no_frame_annotated_is_an_error_that_says_why(tmp_path, tiny_model_dir, capsys):
    bag = tmp_path / "in"
    write_bag(bag, "mcap", {CAMERA: "raw"}, frames=4, bad={CAMERA: {0, 1, 2, 3}})
    error = _fails(capsys, bag, tmp_path / "out", tiny_model_dir)
    assert "no frame" in error and "all 4 chosen frames were skipped" in error and "nv12" in error
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]  # no output, no partial run


def test_the_summary_gives_no_rate_without_annotated_frames(tmp_path):
    summary = Summary(out=tmp_path / "out", storage="mcap", frames=4, per_topic={CAMERA: [0, 4]})
    summary.skipped["unsupported encoding 'nv12'"] = 4
    summary.seconds.update(total=2.0, load=0.5, model=0.0)
    lines = format_summary(summary)
    assert lines[0].startswith("annotated 0 of 4 frames")
    assert "no frames were annotated" in lines[-2] and "frames/s" not in "\n".join(lines)
    summary.per_topic[CAMERA] = [3, 1]
    assert "2.67 frames/s" in format_summary(summary)[-2]  # 4 frames done here in 1.5 s


def test_the_second_writer_writes_messages_a_ros2_typestore_decodes(tmp_path):
    """The helper's premise: mcap-ros2-support wrote the CDR a ROS 2 reader expects."""
    store = get_typestore(Stores.ROS2_JAZZY)
    path = tmp_path / "premise.mcap"
    frames = write_mcap([path], frames=2, tf=3)
    decoded = [(topic, store.deserialize_cdr(raw, {CAMERA: "sensor_msgs/msg/Image", TF: "tf2_msgs/msg/TFMessage",
                                                    DESCRIPTION: "std_msgs/msg/String"}[topic]))
               for topic, _, raw in messages_of([path])]
    images = [m for topic, m in decoded if topic == CAMERA]
    assert [bytes(m.data) for m in images] == [f.rgb.tobytes() for f in frames]
    assert [m.transforms[0].transform.translation.x for topic, m in decoded if topic == TF] == [0.0, 0.01, 0.02]


@pytest.mark.parametrize("version", [5, 9])
def test_a_humble_or_jazzy_recording_gives_an_output_of_its_distribution(tmp_path, tiny_model_dir, version):
    bag = tmp_path / "rec"
    bag.mkdir()
    write_mcap([bag / "rec_0.mcap"])
    recorder_metadata(bag, ["rec_0.mcap"], COUNTS, RECORDED_QOS, version=version)
    out = tmp_path / "out"
    assert annotate(bag, out, tiny_model_dir) == 0
    info = yaml.safe_load((out / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
    assert info["version"] == version
    assert isinstance(info["topics_with_message_count"][0]["topic_metadata"]["offered_qos_profiles"],
                      list if version == 9 else str)
