"""annotate-bag's output as each ROS 2 distribution's rosbag2 writes it, field by field, and its
compression. The facts, from ros2/rosbag2 (branches humble, iron, jazzy; rolling of late 2024
for Kilted, which writes Jazzy's version 9 - rosbags 0.11, which knows Kilted, reads up to 9):

* metadata.yaml (rosbag2_storage yaml.hpp, Humble's metadata_io.cpp, convert<BagMetadata>::encode):
  keys version, storage_identifier, duration{nanoseconds}, starting_time{nanoseconds_since_epoch},
  message_count, topics_with_message_count, compression_format, compression_mode,
  relative_file_paths, files[{path, starting_time, duration, message_count}], then custom_data
  (version 6 on, Iron) and ros_distro (8 on, Jazzy). bag_metadata.hpp's version: Humble 5, Iron 7,
  Jazzy 9. (Version 8 was written by no release: rolling between Iron and Jazzy, and rosbags.)
* topic_metadata: name, type, serialization_format, offered_qos_profiles, then
  type_description_hash (7 on). offered_qos_profiles up to 8: ONE string, yaml-cpp's dump of the
  list of profiles with the policies as rmw enum integers (keep_last 1, reliable 1, best_effort 2,
  transient_local 1, volatile 2, automatic 1), read back `as<std::string>()` (a list fails:
  "bad conversion"); Humble's QoS decoder reads the policies `as<int>()`. From 9: a YAML list
  with the policies as rmw_qos_*_policy_to_str names. Empty: "" up to 8, [] from 9.
* compression (rosbag2_compression): compression_format "zstd", compression_mode "FILE" or
  "MESSAGE", a FILE-compressed storage file listed as <name>.zstd; "" and "" without.
* sqlite3 (sqlite_storage.cpp, kDBSchemaVersion_): table schema(schema_version, ros_distro):
  Humble 3, Iron on 4; topics(id, name, type, serialization_format, offered_qos_profiles) plus
  type_description_hash and the message_definitions table from 4; the metadata table is filled
  (metadata_version, the YAML without its top key) from Iron on, left empty by Humble.
* MCAP (rosbag2_storage_mcap): profile "ros2", schemas ros2msg, channel metadata
  offered_qos_profiles (the distribution's string form) plus topic_type_hash from Iron; a
  metadata record "rosbag2" holding ROS_DISTRO (Humble, Iron) or serialized_metadata (Jazzy on).
"""
from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
import yaml
import zstandard
from mcap.reader import make_reader

from bagmaker import read_bag, write_bag
from instructsam_core.cli import main
from mcapmaker import CAMERA, RECORDED_QOS, TF, recorder_metadata, write_mcap

VERSION = {"humble": 5, "iron": 7, "jazzy": 9, "kilted": 9}
SQLITE_SCHEMA = {"humble": 3, "iron": 4, "jazzy": 4, "kilted": 4}
TOP_KEYS = ["version", "storage_identifier", "duration", "starting_time", "message_count",
            "topics_with_message_count", "compression_format", "compression_mode", "relative_file_paths", "files"]
RMW = {"keep_last": 1, "keep_all": 2, "reliable": 1, "best_effort": 2, "transient_local": 1, "volatile": 2,
       "automatic": 1}
# sensor_msgs/msg/Image's RIHS01, as the ROS 2 Jazzy/Kilted build lists it (share/sensor_msgs/msg/Image.json).
IMAGE_HASH = "RIHS01_d31d41a9a4c4bc8eae9be757b0beed306564f7526c88ea6a4588fb9582527d47"
COUNTS = {"/robot_description": 1, CAMERA: 20, TF: 30}


def annotate(bag: Path, out: Path, model: Path, *extra) -> int:
    return main(["annotate-bag", "--bag", str(bag), "--topics", CAMERA, "--instruction", "red circles",
                 "--out", str(out), "--model", str(model), "--no-progress", *map(str, extra)])


@pytest.fixture(scope="module")
def recording(tmp_path_factory) -> Path:
    """A Jazzy recorder's bag: MCAP from mcap-ros2-support, QoS in metadata.yaml."""
    bag = tmp_path_factory.mktemp("recording") / "rec"
    bag.mkdir()
    write_mcap([bag / "rec_0.mcap"])
    recorder_metadata(bag, ["rec_0.mcap"], COUNTS, RECORDED_QOS)
    return bag


def expected_qos(profiles: list[dict], distro: str):
    """What the distribution writes for these profiles (given as Jazzy's names)."""
    if VERSION[distro] >= 9:
        return profiles
    return [{key: RMW.get(value, value) if isinstance(value, str) else value for key, value in p.items()}
            for p in profiles]


def parse_qos(value, distro: str):
    if VERSION[distro] >= 9:
        assert isinstance(value, list)
        return value
    assert isinstance(value, str)  # Humble and Iron read it as<std::string>()
    return yaml.safe_load(value) if value else []


def stored_qos(text: str, distro: str):
    """A storage file's QoS string (sqlite3 column, MCAP channel metadata): the YAML of the list."""
    return parse_qos(text if VERSION[distro] < 9 else yaml.safe_load(text), distro)


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
@pytest.mark.parametrize("distro", ["humble", "iron", "jazzy", "kilted"])
def test_metadata_and_storage_as_the_distribution_writes_them(recording, tmp_path, tiny_model_dir, distro, storage):
    out = tmp_path / "out"
    assert annotate(recording, out, tiny_model_dir, "--ros-distro", distro, "--storage", storage) == 0
    text = (out / "metadata.yaml").read_text()
    info = yaml.safe_load(text)["rosbag2_bagfile_information"]
    version = VERSION[distro]
    keys = TOP_KEYS + (["custom_data"] if version >= 6 else []) + (["ros_distro"] if version >= 8 else [])
    assert list(info) == keys
    assert info["version"] == version and info["storage_identifier"] == storage
    assert (info["compression_format"], info["compression_mode"]) == ("", "")
    if version >= 6:
        assert info["custom_data"] is None
    if version >= 8:
        assert info["ros_distro"] == distro

    types, messages = read_bag(out)
    times = [t for _, t, _ in messages]
    assert info["message_count"] == len(messages) == 51 + 40
    assert info["starting_time"] == {"nanoseconds_since_epoch": min(times)}
    assert info["duration"] == {"nanoseconds": max(times) - min(times)}
    data_file = next(p.name for p in out.iterdir() if p.name not in ("metadata.yaml", "coco.json"))
    assert info["relative_file_paths"] == [data_file] and data_file.endswith(".mcap" if storage == "mcap" else ".db3")
    assert info["files"] == [{"path": data_file, "starting_time": {"nanoseconds_since_epoch": min(times)},
                              "duration": {"nanoseconds": max(times) - min(times)}, "message_count": len(messages)}]

    listed = {}
    for entry in info["topics_with_message_count"]:
        meta = entry["topic_metadata"]
        assert list(meta) == ["name", "type", "serialization_format", "offered_qos_profiles"] + (
            ["type_description_hash"] if version >= 7 else [])
        assert meta["type"] == types[meta["name"]] and meta["serialization_format"] == "cdr"
        assert entry["message_count"] == sum(1 for m in messages if m[0] == meta["name"])
        listed[meta["name"]] = meta
    assert sorted(listed) == sorted([*COUNTS, f"{CAMERA}/segmentation", f"{CAMERA}/label_image"])
    for topic in COUNTS:
        assert parse_qos(listed[topic]["offered_qos_profiles"], distro) == expected_qos(RECORDED_QOS[topic], distro)
    assert parse_qos(listed[f"{CAMERA}/segmentation"]["offered_qos_profiles"], distro) == []
    if version < 9:  # the string as yaml-cpp writes it: double-quoted, escaped line breaks
        assert 'offered_qos_profiles: "- history: 1\\n  depth: 100\\n  reliability: 1\\n  durability: 2\\n' in text
        assert 'offered_qos_profiles: ""' in text
    hashes = {name: meta.get("type_description_hash") for name, meta in listed.items()}
    if version >= 7:
        assert hashes[CAMERA] == hashes[f"{CAMERA}/label_image"] == IMAGE_HASH
        assert all(h.startswith("RIHS01_") and len(h) == 7 + 64 for h in hashes.values())

    qos_text = {name: meta["offered_qos_profiles"] for name, meta in listed.items()}
    if storage == "sqlite3":
        check_sqlite(out / data_file, distro, info, qos_text, hashes)
    else:
        check_mcap(out / data_file, distro, info, qos_text, hashes)


def check_sqlite(path: Path, distro: str, info: dict, qos_text: dict, hashes: dict) -> None:
    with sqlite3.connect(path) as db:
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        schema = SQLITE_SCHEMA[distro]
        definitions = {"message_definitions"} if schema >= 4 else set()
        assert tables == {"schema", "metadata", "topics", "messages"} | definitions
        assert db.execute("SELECT schema_version, ros_distro FROM schema").fetchall() == [(schema, distro)]
        columns = [row[1] for row in db.execute("PRAGMA table_info(topics)")]
        assert columns == ["id", "name", "type", "serialization_format", "offered_qos_profiles"] + (
            ["type_description_hash"] if schema >= 4 else [])
        for row in db.execute("SELECT * FROM topics"):
            name, qos = row[1], row[4]
            assert stored_qos(qos, distro) == parse_qos(qos_text[name], distro)
            if schema >= 4:
                assert row[5] == hashes[name]
        rows = db.execute("SELECT metadata_version, metadata FROM metadata").fetchall()
        if distro == "humble":
            assert rows == []
        else:
            assert len(rows) == 1 and rows[0][0] == VERSION[distro] and yaml.safe_load(rows[0][1]) == info


def check_mcap(path: Path, distro: str, info: dict, qos_text: dict, hashes: dict) -> None:
    with open(path, "rb") as handle:
        reader = make_reader(handle)
        assert reader.get_header().profile == "ros2"
        summary = reader.get_summary()
        assert {s.encoding for s in summary.schemas.values()} == {"ros2msg"}
        for channel in summary.channels.values():
            expected_keys = {"offered_qos_profiles"} | ({"topic_type_hash"} if VERSION[distro] >= 7 else set())
            assert set(channel.metadata) == expected_keys
            stored = channel.metadata["offered_qos_profiles"]
            assert stored_qos(stored, distro) == parse_qos(qos_text[channel.topic], distro)
            if VERSION[distro] >= 7:
                assert channel.metadata["topic_type_hash"] == hashes[channel.topic]
        records = [(m.name, dict(m.metadata)) for m in reader.iter_metadata()]
    if VERSION[distro] >= 9:
        assert [name for name, _ in records] == ["rosbag2"] and list(records[0][1]) == ["serialized_metadata"]
        assert yaml.safe_load(records[0][1]["serialized_metadata"]) == info
    else:
        assert records == [("rosbag2", {"ROS_DISTRO": distro})]


@pytest.mark.parametrize("version, expected", [(8, 7), (9, 9)])
def test_the_output_follows_the_input_version(tmp_path, tiny_model_dir, version, expected):
    """rosbags writes 8 (QoS string) or 9; 8 goes to Iron's 7, the oldest format with its fields.
    (Humble's 5 and Jazzy's 9 from a recorder's metadata.yaml: test_annotate_bag_sources.py.)"""
    bag = tmp_path / "in"
    write_bag(bag, "mcap", {CAMERA: "raw"}, frames=2, version=version)
    out = tmp_path / "out"
    assert annotate(bag, out, tiny_model_dir) == 0
    assert yaml.safe_load((out / "metadata.yaml").read_text())["rosbag2_bagfile_information"]["version"] == expected


# ----------------------------------------------------------------------------- compression


def _chunk_compressions(path: Path) -> set[str]:
    with open(path, "rb") as handle:
        return {c.compression for c in make_reader(handle).get_summary().chunk_indexes}


def test_mcap_chunks_are_compressed_and_lose_nothing(recording, tmp_path, tiny_model_dir):
    sizes, contents = {}, {}
    for choice in (None, "none", "lz4"):
        out = tmp_path / f"out_{choice}"
        assert annotate(recording, out, tiny_model_dir, *(["--compression", choice] if choice else [])) == 0
        data = out / f"{out.name}.mcap"
        assert _chunk_compressions(data) == {{None: "zstd", "none": "", "lz4": "lz4"}[choice]}
        sizes[choice], contents[choice] = data.stat().st_size, read_bag(out)
    assert contents[None] == contents["none"] == contents["lz4"]  # the label images too, bit for bit
    assert sizes[None] < sizes["lz4"] < sizes["none"]


@pytest.mark.parametrize("mode", ["file", "message"])
def test_sqlite3_compressed_as_rosbag2_compresses(recording, tmp_path, tiny_model_dir, mode):
    plain = tmp_path / "plain"
    assert annotate(recording, plain, tiny_model_dir, "--storage", "sqlite3", "--ros-distro", "humble") == 0
    out = tmp_path / "out"
    assert annotate(recording, out, tiny_model_dir, "--storage", "sqlite3", "--ros-distro", "humble",
                    "--compression", "zstd", "--compression-mode", mode) == 0
    info = yaml.safe_load((out / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
    assert (info["compression_format"], info["compression_mode"]) == ("zstd", mode.upper())
    name = "out.db3.zstd" if mode == "file" else "out.db3"
    assert info["relative_file_paths"] == [name] and sorted(p.name for p in out.iterdir()) == sorted(
        ["metadata.yaml", "coco.json", name])
    magic = b"\x28\xb5\x2f\xfd"
    if mode == "file":
        raw = (out / name).read_bytes()
        assert raw.startswith(magic)
        assert zstandard.ZstdDecompressor().decompressobj().decompress(raw).startswith(b"SQLite format 3\x00")
    else:
        with sqlite3.connect(out / name) as db:
            rows = db.execute("SELECT data FROM messages ORDER BY id").fetchall()
        with sqlite3.connect(plain / "plain.db3") as db:
            plain_rows = db.execute("SELECT data FROM messages ORDER BY id").fetchall()
        assert all(row[0].startswith(magic) for row in rows)
        unpack = zstandard.ZstdDecompressor()
        assert [unpack.decompressobj().decompress(r[0]) for r in rows] == [r[0] for r in plain_rows]
    assert read_bag(out) == read_bag(plain)
    assert (out / name).stat().st_size < (plain / "plain.db3").stat().st_size


@pytest.mark.parametrize("extra, words", [
    (["--storage", "sqlite3", "--compression", "lz4"], "zstd only"),
    (["--compression-mode", "file"], "--compression-mode is for sqlite3"),
    (["--storage", "sqlite3", "--compression-mode", "message"], "needs --compression zstd"),
])
def test_compression_options_that_rosbag2_cannot_read(recording, tmp_path, tiny_model_dir, capsys, extra, words):
    assert annotate(recording, tmp_path / "out", tiny_model_dir, *extra) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and words in error
    assert not (tmp_path / "out").exists()
