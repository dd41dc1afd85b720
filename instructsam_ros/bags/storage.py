"""The output bag's storage file, written as the chosen distribution's rosbag2 writes it
(rosbag2_format.py has the facts): MCAP through the official `mcap` writer with chunk
compression (none, zstd, lz4), or sqlite3 with rosbag2's schema of that distribution and,
when asked, rosbag2's zstd compression of the file or of each message."""
from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path

import mcap.writer
import zstandard
from mcap.writer import LIBRARY_IDENTIFIER, CompressionType
from mcap.writer import Writer as McapWriter

from instructsam_ros.bags.rosbag2_format import Distro, FileRecord, dump_yaml, qos_text

MCAP_COMPRESSIONS = {"none": CompressionType.NONE, "zstd": CompressionType.ZSTD, "lz4": CompressionType.LZ4}
ZSTD_LEVEL = 1  # rosbag2_compression_zstd's kDefaultZstdCompressionLevel
MCAP_CHUNK_BYTES = 4 * 1024 * 1024  # rosbag2's zstd_small preset: chunks that compress well
LIBRARY = f"instructsam annotate-bag; {LIBRARY_IDENTIFIER}"


class _ZstdAtRosbag2Level:
    """What `mcap`'s writer calls to compress a chunk (`zstandard.compress`, level 3), at
    rosbag2's level 1 instead: 14x faster on a noisy 640x480 frame (0.9 against 12 ms on 2
    cores) for a 1 % larger result (BENCHMARKS.md). The writer has no level option; its module's
    `zstandard` is replaced by this, for every MCAP written in this process."""

    ZstdError = zstandard.ZstdError

    @staticmethod
    def compress(data: bytes) -> bytes:
        return zstandard.ZstdCompressor(level=ZSTD_LEVEL).compress(data)


if getattr(mcap.writer, "zstandard", None) is zstandard:
    mcap.writer.zstandard = _ZstdAtRosbag2Level


@dataclass
class OutputTopic:
    """One topic of the output: what its storage records and metadata.yaml lists."""

    id: int
    name: str
    msgtype: str
    serialization_format: str
    qos: list
    encoding: str  # of the definition: "ros2msg", "ros2idl", or "" when the bag had none
    definition: str
    digest: str


class _Span:
    """First and last log time and the count of what a file holds."""

    def __init__(self) -> None:
        self.first, self.last, self.count = 0, 0, 0

    def add(self, log_time: int) -> None:
        if self.count == 0:
            self.first = self.last = log_time
        self.first, self.last = min(self.first, log_time), max(self.last, log_time)
        self.count += 1

    def record(self, path: str) -> FileRecord:
        return FileRecord(path, self.first, self.last - self.first, self.count)


class McapStorage:
    """An MCAP file with rosbag2's profile, schemas, channel metadata and metadata record."""

    storage_id = "mcap"

    def __init__(self, path: Path, distro: Distro, compression: str) -> None:
        self.path, self.distro = path, distro
        self.compression = ("", "")  # metadata.yaml's: MCAP compresses inside its chunks
        self._file = open(path, "xb")
        self._writer = McapWriter(self._file, chunk_size=MCAP_CHUNK_BYTES, compression=MCAP_COMPRESSIONS[compression])
        self._writer.start(profile="ros2", library=LIBRARY)
        self._schemas: dict[str, int] = {}
        self._channels: dict[int, int] = {}
        self.span = _Span()

    @property
    def relative_path(self) -> str:
        return self.path.name

    def add_topic(self, topic: OutputTopic) -> None:
        schema = self._schemas.get(topic.msgtype)
        if schema is None:
            schema = self._schemas[topic.msgtype] = self._writer.register_schema(
                topic.msgtype, topic.encoding, topic.definition.encode() if topic.encoding else b"")
        metadata = {"offered_qos_profiles": qos_text(topic.qos, self.distro)}
        if self.distro.type_hashes:
            metadata["topic_type_hash"] = topic.digest
        self._channels[topic.id] = self._writer.register_channel(topic.name, topic.serialization_format, schema,
                                                                 metadata)

    def write(self, topic_id: int, log_time: int, data) -> None:
        self._writer.add_message(self._channels[topic_id], log_time, bytes(data), log_time)
        self.span.add(log_time)

    def close(self, document: dict) -> None:
        if self.distro.version >= 9:
            record = {"serialized_metadata": dump_yaml(document)}
        else:
            record = {"ROS_DISTRO": self.distro.name}
        self._writer.add_metadata("rosbag2", record)
        self._writer.finish()
        self._file.close()

    def abort(self) -> None:
        self._file.close()


_SQLITE_TABLES = {
    3: """
CREATE TABLE schema(schema_version INTEGER PRIMARY KEY, ros_distro TEXT NOT NULL);
CREATE TABLE metadata(id INTEGER PRIMARY KEY, metadata_version INTEGER NOT NULL, metadata TEXT NOT NULL);
CREATE TABLE topics(id INTEGER PRIMARY KEY, name TEXT NOT NULL, type TEXT NOT NULL,
  serialization_format TEXT NOT NULL, offered_qos_profiles TEXT NOT NULL);
CREATE TABLE messages(id INTEGER PRIMARY KEY, topic_id INTEGER NOT NULL, timestamp INTEGER NOT NULL,
  data BLOB NOT NULL);
CREATE INDEX timestamp_idx ON messages (timestamp ASC);
""",
    4: """
CREATE TABLE schema(schema_version INTEGER PRIMARY KEY, ros_distro TEXT NOT NULL);
CREATE TABLE metadata(id INTEGER PRIMARY KEY, metadata_version INTEGER NOT NULL, metadata TEXT NOT NULL);
CREATE TABLE topics(id INTEGER PRIMARY KEY, name TEXT NOT NULL, type TEXT NOT NULL,
  serialization_format TEXT NOT NULL, offered_qos_profiles TEXT NOT NULL, type_description_hash TEXT NOT NULL);
CREATE TABLE message_definitions(id INTEGER PRIMARY KEY, topic_type TEXT NOT NULL, encoding TEXT NOT NULL,
  encoded_message_definition TEXT NOT NULL, type_description_hash TEXT NOT NULL);
CREATE TABLE messages(id INTEGER PRIMARY KEY, topic_id INTEGER NOT NULL, timestamp INTEGER NOT NULL,
  data BLOB NOT NULL);
CREATE INDEX timestamp_idx ON messages (timestamp ASC);
""",
}


class Sqlite3Storage:
    """A .db3 with the distribution's schema; `mode` "file" or "message" compresses as rosbag2
    does (zstd, level 1), None leaves it plain."""

    storage_id = "sqlite3"

    def __init__(self, path: Path, distro: Distro, mode: str | None) -> None:
        self.path, self.distro, self.mode = path, distro, mode
        self.compression = ("zstd", mode.upper()) if mode else ("", "")
        self._compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL)
        if path.exists():
            raise FileExistsError(f"{path} exists")
        self._db = sqlite3.connect(path, isolation_level=None)
        self._db.executescript(_SQLITE_TABLES[distro.sqlite_schema])
        self._db.execute("INSERT INTO schema (schema_version, ros_distro) VALUES (?, ?)",
                         (distro.sqlite_schema, distro.name))
        self._db.execute("BEGIN")
        self._defined: set[str] = set()
        self.span = _Span()

    @property
    def relative_path(self) -> str:
        return self.path.name + (".zstd" if self.mode == "file" else "")

    def add_topic(self, topic: OutputTopic) -> None:
        qos = qos_text(topic.qos, self.distro)
        if self.distro.sqlite_schema >= 4:
            self._db.execute("INSERT INTO topics (id, name, type, serialization_format, offered_qos_profiles, "
                             "type_description_hash) VALUES (?, ?, ?, ?, ?, ?)",
                             (topic.id, topic.name, topic.msgtype, topic.serialization_format, qos, topic.digest))
            if topic.encoding and topic.msgtype not in self._defined:
                self._defined.add(topic.msgtype)
                self._db.execute("INSERT INTO message_definitions (topic_type, encoding, encoded_message_definition, "
                                 "type_description_hash) VALUES (?, ?, ?, ?)",
                                 (topic.msgtype, topic.encoding, topic.definition, topic.digest))
        else:
            self._db.execute("INSERT INTO topics (id, name, type, serialization_format, offered_qos_profiles) "
                             "VALUES (?, ?, ?, ?, ?)",
                             (topic.id, topic.name, topic.msgtype, topic.serialization_format, qos))

    def write(self, topic_id: int, log_time: int, data) -> None:
        if self.mode == "message":
            data = self._compressor.compress(data)
        self._db.execute("INSERT INTO messages (topic_id, timestamp, data) VALUES (?, ?, ?)",
                         (topic_id, log_time, bytes(data)))
        self.span.add(log_time)

    def close(self, document: dict) -> None:
        if self.distro.version >= 7:  # Humble's plugin creates the table but never fills it
            self._db.execute("INSERT INTO metadata (metadata_version, metadata) VALUES (?, ?)",
                             (self.distro.version, dump_yaml(document)))
        self._db.execute("COMMIT")
        self._db.close()
        if self.mode == "file":
            target = self.path.with_name(self.path.name + ".zstd")
            with open(self.path, "rb") as source, open(target, "xb") as sink:
                self._compressor.copy_stream(source, sink)
            self.path.unlink()

    def abort(self) -> None:
        try:
            self._db.rollback()
        except sqlite3.Error:  # closed already, or the commit was what failed
            pass
        self._db.close()


def open_storage(directory: Path, storage: str, distro: Distro, compression: str, mode: str | None):
    """The storage file inside a new bag directory, named after it as rosbags names it."""
    directory.mkdir(parents=True)
    if storage == "mcap":
        return McapStorage(directory / f"{directory.name}.mcap", distro, compression)
    return Sqlite3Storage(directory / f"{directory.name}.db3", distro, mode if compression == "zstd" else None)
