"""The input bag as `ros2 bag play` reads it: every message of its storage files, on the files'
own channels, checked against every index the bag has.

rosbags' directory reader takes the topics from metadata.yaml and reads a file's channel only
when its QoS matches the YAML's; the official `mcap` writer beside a recorder's metadata.yaml
(QoS in the YAML, none in the file) lost every message that way, without an error. Here the
storage files are read with rosbags' storage readers directly (their channels, definitions and
message counts are the truth, as for rosbag2); metadata.yaml supplies the compression, the file
list, the counts to check against and, as for `ros2 bag play`, the topics' offered QoS.
An MCAP file without message indexes (which rosbags' reader would skip chunk by chunk) is
read by scanning it."""
from __future__ import annotations

import heapq
import sqlite3
from collections import Counter
from collections.abc import Collection, Iterator
from pathlib import Path

import yaml
import zstandard
from rosbags.interfaces import MessageDefinitionFormat, TopicInfo
from rosbags.rosbag2 import Reader
from rosbags.rosbag2.reader import DirectoryReader
from rosbags.rosbag2.storage_mcap import McapReader
from rosbags.typesys import Stores, get_types_from_idl, get_types_from_msg, get_typestore

from instructsam_core.errors import UserError

_IDL_SEPARATOR = "=" * 80 + "\n"


def _bag_types(connections) -> dict:
    """The message types a bag defines (as rosbags' AnyReader parses stored definitions)."""
    types: dict = {}
    for connection in connections:
        definition = connection.msgdef
        if definition.format == MessageDefinitionFormat.MSG:
            types.update(get_types_from_msg(definition.data, connection.msgtype))
        elif definition.format == MessageDefinitionFormat.IDL:
            if definition.data.startswith(f"{_IDL_SEPARATOR}IDL: "):
                for part in definition.data.split(_IDL_SEPARATOR)[1:]:
                    types.update(get_types_from_idl(part.split("\n", 1)[1]))
            else:
                types.update(get_types_from_idl(definition.data))
    return types


def _mcap_format(path: Path) -> tuple[int | None, str | None]:
    """(metadata version, ROS distro) from an MCAP file's "rosbag2" metadata record, if any."""
    from mcap.exceptions import McapError
    from mcap.reader import make_reader

    version = distro = None
    try:
        with open(path, "rb") as handle:
            for record in make_reader(handle).iter_metadata():
                if record.name != "rosbag2":
                    continue
                distro = record.metadata.get("ROS_DISTRO") or distro
                serialized = record.metadata.get("serialized_metadata")
                if serialized:
                    document = yaml.safe_load(serialized) or {}
                    version = int(document.get("version", 0)) or version
                    distro = document.get("ros_distro") or distro
    except (McapError, OSError, ValueError, TypeError, AttributeError, yaml.YAMLError):
        pass
    return version, distro


def _sqlite_format(path: Path) -> tuple[int | None, str | None]:
    """(metadata version, ROS distro) from a .db3's schema and metadata tables, if any."""
    version = distro = None
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
            tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            if "schema" in tables:
                row = db.execute("SELECT ros_distro FROM schema").fetchone()
                distro = row[0] if row else None
            if "metadata" in tables:
                row = db.execute("SELECT metadata_version FROM metadata ORDER BY id DESC").fetchone()
                version = int(row[0]) if row else None
    except (sqlite3.Error, ValueError, TypeError):
        pass
    return version, distro


class InputBag:
    """The messages of a rosbag2 directory or single .mcap/.db3, merged across its files in log
    time order, with the interface of rosbags' AnyReader that annotate-bag uses."""

    def __init__(self, path: Path, default_store) -> None:
        self.path, self.default_store = path, default_store
        self._reader = Reader(path)
        self._reader.open()
        try:
            self._open()
        except BaseException:
            self._reader.close()
            raise

    def _open(self) -> None:
        storage = self._reader.storage
        self.listed: Counter | None = None  # messages per topic in metadata.yaml
        self.listed_qos: dict[str, list] = {}  # offered QoS per topic in metadata.yaml (what play offers)
        self.listed_hashes: dict[tuple[str, str], str] = {}  # (topic, type) -> metadata.yaml's type hash
        self.custom_data = None
        if isinstance(storage, DirectoryReader):
            self.storages = list(storage.storages)
            self.message_compressed = storage.metadata.compression_mode == "message"
            self.listed = Counter()
            for connection in storage.connections:
                self.listed[connection.topic] += connection.msgcount
                self.listed_qos.setdefault(connection.topic, list(connection.ext.offered_qos_profiles))
                if connection.digest:
                    self.listed_hashes.setdefault((connection.topic, connection.msgtype), connection.digest)
            self.ros_distro, self.custom_data = storage.metadata.ros_distro, storage.metadata.custom
            document = yaml.safe_load((self.path / "metadata.yaml").read_text(encoding="utf-8"))
            self.version = int(document["rosbag2_bagfile_information"]["version"])
        else:
            self.storages = [storage]
            self.message_compressed = False
            reader = _mcap_format if self.path.suffix == ".mcap" else _sqlite_format
            self.version, self.ros_distro = reader(self.path)
        self.connections = []
        self._maps: list[dict] = []  # per storage file: its channel id -> our connection
        for storage_file in self.storages:
            mapping = {}
            for connection in storage_file.connections:
                mapping[connection.id] = connection._replace(id=len(self.connections) + 1, owner=self)
                self.connections.append(mapping[connection.id])
            self._maps.append(mapping)
        self.typestore = get_typestore(Stores.EMPTY)
        self.typestore.register(_bag_types(self.connections))
        self._unzstd = zstandard.ZstdDecompressor()

    def close(self) -> None:
        self._reader.close()

    @property
    def start_time(self) -> int:
        return min((s.metadata.start_time for s in self.storages), default=0)

    @property
    def end_time(self) -> int:
        return max((s.metadata.end_time for s in self.storages), default=0)

    @property
    def topics(self) -> dict[str, TopicInfo]:
        grouped: dict[str, list] = {}
        for connection in self.connections:
            grouped.setdefault(connection.topic, []).append(connection)
        topics = {}
        for name, connections in sorted(grouped.items()):
            types = {c.msgtype for c in connections}
            topics[name] = TopicInfo(types.pop() if len(types) == 1 else None, connections[0].msgdef,
                                     sum(c.msgcount for c in connections), connections)
        return topics

    def counts(self) -> Counter:
        """Messages per topic by the files' own indexes (MCAP statistics, sqlite3 rows)."""
        counts = Counter()
        for connection in self.connections:
            counts[connection.topic] += connection.msgcount
        return counts

    def check_index(self) -> None:
        """Refuse a bag whose indexes list messages its files cannot yield (one line: the topic
        and the counts) before any work is done; `ros2 bag play` would not play them either."""
        for storage_file in self.storages:
            on_topics = sum(c.msgcount for c in storage_file.connections)
            total = storage_file.metadata.message_count
            if total > on_topics:
                raise UserError(f"{storage_file.path.name} in {self.path} holds {total} messages, only {on_topics} "
                                "of them on a topic it defines")
        if self.listed is None:
            return
        counts = self.counts()
        for topic, listed in sorted(self.listed.items()):
            if listed > counts[topic]:
                raise UserError(f"{self.path}/metadata.yaml lists {listed} messages on {topic} but the bag's files "
                                f"hold {counts[topic]}; the recording is incomplete (`ros2 bag reindex` rebuilds "
                                "metadata.yaml from the files)")

    def messages(self, connections: Collection = (), start: int | None = None,
                 stop: int | None = None) -> Iterator[tuple[object, int, bytes]]:
        """(connection, log time, raw CDR) of the chosen connections (all: empty), in log time order."""
        wanted = {c.id for c in connections}
        streams = []
        for storage_file, mapping in zip(self.storages, self._maps):
            chosen = [c for c in storage_file.connections if not wanted or mapping[c.id].id in wanted]
            if chosen:
                streams.append(self._file_messages(storage_file, mapping, chosen, start, stop))
        if len(streams) == 1:
            yield from streams[0]
        else:
            yield from heapq.merge(*streams, key=lambda item: item[1])

    def _file_messages(self, storage_file, mapping: dict, chosen: list, start, stop):
        read = storage_file.messages
        if isinstance(storage_file, McapReader) and storage_file.chunks and not any(
                chunk.channel_count for chunk in storage_file.chunks):
            read = storage_file.messages_scan  # chunks without message indexes
        for connection, log_time, raw in read(chosen, start, stop):
            if self.message_compressed:
                raw = self._unzstd.decompressobj().decompress(raw)
            yield mapping[connection.id], log_time, raw

    def store_of(self, msgtype: str):
        """The typestore that knows `msgtype`: the bag's own definitions first."""
        return self.typestore if msgtype in self.typestore.fielddefs else self.default_store

    def deserialize(self, raw: bytes, msgtype: str):
        return self.store_of(msgtype).deserialize_cdr(raw, msgtype)
