"""Parameters, the launch file, the parameter YAML, the DDS profile, QoS and diagnostics."""
from __future__ import annotations

import ast
import math
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml
from rclpy.qos import DurabilityPolicy, ReliabilityPolicy

from instructsam_ros.dds.profiles import (
    DEFAULT_PROFILE,
    LARGE_FRAMES_PROFILE,
    first_frame_warning,
    frame_limit_report,
    port_queue_capacity,
    profile_variables,
    shared_memory_limit,
)
from instructsam_ros.segment_node.diagnostics import FrameTiming, StreamStats, build_diagnostics
from instructsam_ros.segment_node.cameras import depth_remappings
from instructsam_ros.segment_node.parameters import (
    MAX_PHRASES,
    PARAMETER_NAMES,
    PARAMETERS,
    launch_value,
    phrase_list_problem,
    validate,
)
from instructsam_ros.dds.qos import instruction_qos, stream_qos
from instructsam_ros.dds.profiles import use_large_data_profile
from instructsam_ros.segment_node.diagnostics import ProblemLog

REPO = Path(__file__).resolve().parents[2]
LAUNCH = REPO / "launch" / "segment.launch.py"
CONFIG = REPO / "instructsam_ros" / "config"


def test_every_default_is_valid():
    for entry in PARAMETERS:
        assert validate(entry.name, entry.default) is None, entry.name


@pytest.mark.parametrize(
    "name, value, words",
    [
        ("threshold", 1.5, "in [0.0, 1.0]"),
        ("threshold", "high", "must be of type float"),
        ("max_instances", 0, "in [1, 1000]"),
        ("max_instances", True, "must be of type int"),
        ("device", "gpu", "auto, cpu"),
        ("dtype", "int8", "one of auto"),
        ("image_qos_reliability", "fast", "best_effort, reliable"),
        ("max_frame_age", -0.1, "in [0.0"),
        ("tracking_iou", 0.0, "in (0.0"),
        ("phrases", ["cup", " "], "empty phrases"),
        ("phrases", [1, 2], "list of strings"),
        ("instruction", "x" * 2001, "longer than 2000"),
        ("model", "  ", "must not be empty"),
    ],
)
def test_bad_values_are_refused_with_a_reason(name, value, words):
    reason = validate(name, value)
    assert reason is not None and words in reason and reason.startswith(name)


FLOAT_PARAMETERS = [entry.name for entry in PARAMETERS if isinstance(entry.default, float)]


@pytest.mark.parametrize("name", FLOAT_PARAMETERS)
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_every_float_parameter_refuses_non_finite_values(name, value):
    # NaN passes every range comparison: as threshold it dropped every frame, as max_frame_age
    # it never dropped one.
    assert validate(name, value) == f"{name} must be a finite number, got {value}"


def test_phrase_limits_are_one_rule_for_the_parameter_and_the_service():
    assert phrase_list_problem(["cup"] * MAX_PHRASES) is None and validate("phrases", ["cup"] * MAX_PHRASES) is None
    assert phrase_list_problem(["cup"] * (MAX_PHRASES + 1)) == f"may hold at most {MAX_PHRASES} phrases, got {MAX_PHRASES + 1}"
    assert validate("phrases", ["cup"] * 1000) == "phrases may hold at most 32 phrases, got 1000"
    assert "longer than 200 characters" in validate("phrases", ["cup", "x" * 201])
    assert phrase_list_problem(["x" * 200]) is None


@pytest.mark.parametrize(
    "name, value",
    [("threshold", 0), ("threshold", 1.0), ("device", "cuda:1"), ("phrases", []), ("phrases", ["red cup"]), ("max_frame_age", 0.0)],
)
def test_good_values_pass(name, value):
    assert validate(name, value) is None


def _launch_tree():
    return ast.parse(LAUNCH.read_text())


def test_launch_file_sets_only_declared_parameters():
    tree = _launch_tree()
    node_calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", None) == "Node"]
    assert len(node_calls) == 1
    keywords = {k.arg: k.value for k in node_calls[0].keywords}
    assert ast.literal_eval(keywords["package"]) == "instructsam_ros"
    assert ast.literal_eval(keywords["executable"]) == "segment_node"
    # Every dict literal of the file is a parameter dict (the camera list is added to one), and
    # NODE_ARGUMENTS names the launch arguments passed on as the node's parameters of that name.
    dicts = [n for n in ast.walk(tree) if isinstance(n, ast.Dict)]
    names = {ast.literal_eval(k) for d in dicts for k in d.keys}
    assert "cameras" in names
    passed = next(ast.literal_eval(n.value) for n in ast.walk(tree) if isinstance(n, ast.Assign)
                  and getattr(n.targets[0], "id", None) == "NODE_ARGUMENTS")
    assert {"model", "device", "threshold", "use_compressed", "autostart"} <= set(passed)
    names |= set(passed)
    assert names <= PARAMETER_NAMES, names - PARAMETER_NAMES
    # The launch arguments the issue asks for exist.
    declared = {
        ast.literal_eval(n.args[0])
        for n in ast.walk(tree)
        if isinstance(n, ast.Call) and getattr(n.func, "id", None) == "DeclareLaunchArgument"
    }
    assert {"model", "device", "image", "namespace", "use_compressed", "threshold", "cameras", "images"} <= declared
    used = {
        ast.literal_eval(n.args[0])
        for n in ast.walk(tree)
        if isinstance(n, ast.Call) and getattr(n.func, "id", None) == "LaunchConfiguration" and isinstance(n.args[0], ast.Constant)
    }
    assert used <= declared, used - declared
    assert set(passed) <= declared


@pytest.mark.parametrize("name, text, value", [
    ("threshold", "0.4", 0.4), ("threshold", "1", 1.0), ("use_compressed", "true", True), ("autostart", "False", False),
    ("model", "yes", "yes"), ("device", "cuda:0", "cuda:0"), ("sam3_config", "", ""), ("inference_layout", "release", "release"),
])
def test_launch_values_are_typed_as_ros_reads_them(name, text, value):
    got = launch_value(name, text)
    assert got == value and type(got) is type(value)


@pytest.mark.parametrize("name, text, words", [
    ("threshold", "high", "threshold must be of type float, got str"),
    ("threshold", ".nan", "threshold must be a finite number"),
    ("threshold", "-0.1", "threshold must be in [0.0, 1.0]"),
    ("use_compressed", "maybe", "use_compressed must be of type bool, got str"),
    ("autostart", "1", "autostart must be of type bool, got int"),
    ("device", "gpu", "device must be auto, cpu"),
    ("inference_layout", "fast", "inference_layout must be release, trained"),
])
def test_bad_launch_values_are_refused_with_the_nodes_reason(name, text, words):
    with pytest.raises(ValueError) as refused:
        launch_value(name, text)
    message = str(refused.value)
    assert message.startswith(f"launch argument {name}:={text!r} refused: ") and words in message and "\n" not in message


@pytest.mark.parametrize("value", ["true", "false", "True", "1"])
def test_depth_arguments_are_topics_not_booleans(value):
    for cameras, arguments in (([], {"depth": value}), (["front"], {"depths_text": value})):
        with pytest.raises(ValueError, match=r"is not a topic: depths? names the aligned depth image topic"):
            depth_remappings(cameras, arguments.get("depth", ""), "", arguments.get("depths_text", ""))
    # A topic that merely contains the word is a topic.
    assert depth_remappings([], f"/{value}/depth", "")[0] == ("depth/image", f"/{value}/depth")


def test_launch_file_uses_the_packaged_config_files():
    source = LAUNCH.read_text()
    for name in ("segment_node.yaml", "fastdds_large_data.xml"):
        assert f'"{name}"' in source and (CONFIG / name).is_file()
    # Exported under the name this distribution's Fast DDS reads.
    assert 'SetEnvironmentVariable(name, LaunchConfiguration("fastdds_profile")) for name in profile_variables()' in source


def test_parameter_yaml_holds_only_declared_valid_parameters():
    data = yaml.safe_load((CONFIG / "segment_node.yaml").read_text())
    params = data["/**"]["ros__parameters"]
    assert set(params) <= PARAMETER_NAMES, set(params) - PARAMETER_NAMES
    for name, value in params.items():
        assert validate(name, value) is None, (name, value)


def test_fastdds_profile_enlarges_shared_memory_and_is_the_default():
    root = ET.parse(CONFIG / "fastdds_large_data.xml").getroot()
    ns = {"d": "http://www.eprosima.com"}
    shm = [t for t in root.iterfind(".//d:transport_descriptor", ns) if t.findtext("d:type", namespaces=ns) == "SHM"]
    assert len(shm) == 1
    assert int(shm[0].findtext("d:segment_size", namespaces=ns)) >= 1280 * 720 * 3 * 2
    participant = root.find(".//d:participant", ns)
    assert participant.get("is_default_profile") == "true"
    assert participant.findtext(".//d:useBuiltinTransports", namespaces=ns) == "false"


def test_each_profile_states_the_largest_frame_it_carries():
    assert shared_memory_limit(DEFAULT_PROFILE) == 16 * 2**20
    kilted = {"ROS_DISTRO": "kilted"}
    report = frame_limit_report({**kilted, "FASTDDS_DEFAULT_PROFILES_FILE": str(DEFAULT_PROFILE)})
    assert report.startswith("Fast DDS profile fastdds_large_data.xml: images up to 16 MiB")
    assert "2560x2048 rgb8 fits" in report and "3840x2160 rgb8 (23.7 MiB) does not" in report
    assert "fastdds_large_frames.xml" in report  # where to go for more
    # The opt-in profile carries the frames the default one loses (4000x3000 rgb8 is 34 MiB),
    # and its segment holds two of its largest messages, so one can be sent while one is read.
    root = ET.parse(LARGE_FRAMES_PROFILE).getroot()
    ns = {"d": "http://www.eprosima.com"}
    segment = int(root.find(".//d:segment_size", ns).text)
    largest = shared_memory_limit(LARGE_FRAMES_PROFILE)
    assert largest == 64 * 2**20 and segment >= 2 * largest and 4000 * 3000 * 3 < largest
    large = frame_limit_report({**kilted, "FASTDDS_DEFAULT_PROFILES_FILE": str(LARGE_FRAMES_PROFILE)})
    assert "images up to 64 MiB" in large and "4096x4096 rgb8 fits" in large
    # No profile, an unreadable one, another middleware: each says what it can.
    assert "640x480 and larger are lost" in frame_limit_report(kilted)
    # Fast DDS 2 never reads the new name: the profile is not in effect, and the line says so.
    assert "640x480 and larger are lost" in frame_limit_report({"ROS_DISTRO": "jazzy", "FASTDDS_DEFAULT_PROFILES_FILE": str(DEFAULT_PROFILE)})
    assert "unknown" in frame_limit_report({**kilted, "FASTDDS_DEFAULT_PROFILES_FILE": "/nonexistent.xml"})
    assert frame_limit_report(kilted, "rmw_cyclonedds_cpp").startswith("RMW rmw_cyclonedds_cpp:")


def test_a_profile_of_the_users_own_is_read_for_its_limit(tmp_path):
    mine = tmp_path / "mine.xml"
    mine.write_text(DEFAULT_PROFILE.read_text().replace("16777216", "33554432"))
    assert shared_memory_limit(mine) == 32 * 2**20
    report = frame_limit_report({"ROS_DISTRO": "jazzy", "FASTRTPS_DEFAULT_PROFILES_FILE": str(mine)})
    assert "images up to 32 MiB" in report and "4096x2160 rgb8 fits, 4000x3000 rgb8 (34.3 MiB) does not" in report
    mine.write_text("<dds><profiles><participant profile_name='p'/></profiles></dds>")
    assert shared_memory_limit(mine) is None  # no default participant: Fast DDS's defaults apply


def test_a_port_queue_too_small_for_what_the_profile_carries_is_named(tmp_path):
    """RTPS sends 65,324-byte fragments; a port must queue every fragment of a whole frame, or
    the first frame larger than all before is lost while the reader grows its buffer."""
    assert port_queue_capacity(DEFAULT_PROFILE) == 512  # unset: Fast DDS's default
    assert port_queue_capacity(LARGE_FRAMES_PROFILE) == 4096
    assert 4096 * 65324 >= 2 * shared_memory_limit(LARGE_FRAMES_PROFILE)  # two of its largest messages
    kilted = {"ROS_DISTRO": "kilted"}
    for profile in (DEFAULT_PROFILE, LARGE_FRAMES_PROFILE):  # 16 MiB in 512 x 64 KiB: fits
        assert first_frame_warning({**kilted, "FASTDDS_DEFAULT_PROFILES_FILE": str(profile)}) is None
    mine = tmp_path / "mine.xml"
    text = LARGE_FRAMES_PROFILE.read_text()
    mine.write_text(text.replace("<port_queue_capacity>4096</port_queue_capacity>", ""))
    warning = first_frame_warning({"ROS_DISTRO": "jazzy", "FASTRTPS_DEFAULT_PROFILES_FILE": str(mine)})
    # 512 x 65,324 bytes = 31.9 MiB; 64 MiB / 65,324 = 1027.3 fragments.
    assert "queues 512 messages (31.9 MiB" in warning and "images up to 64 MiB" in warning
    assert "the first frame over 31.9 MiB" in warning and "port_queue_capacity to 1028 or more" in warning
    mine.write_text(text.replace("<port_queue_capacity>4096</port_queue_capacity>", "<port_queue_capacity>1028</port_queue_capacity>"))
    assert first_frame_warning({"ROS_DISTRO": "jazzy", "FASTRTPS_DEFAULT_PROFILES_FILE": str(mine)}) is None
    # Shared memory alone sends a frame as one message (Fast DDS fragments at the smallest
    # maxMessageSize of the participant's transports), unless rmw_fastrtps adds its own UDPv4,
    # as it does under ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST.
    mine.write_text(text.replace("<port_queue_capacity>4096</port_queue_capacity>", "")
                    .replace("<transport_id>instructsam_udp</transport_id>\n        </userTransports>", "</userTransports>"))
    shm_only = {"ROS_DISTRO": "kilted", "FASTDDS_DEFAULT_PROFILES_FILE": str(mine)}
    assert "instructsam_udp</transport_id>\n        </userTransports>" not in mine.read_text()
    assert first_frame_warning(shm_only) is None
    assert "port_queue_capacity to 1028" in first_frame_warning({**shm_only, "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST"})
    assert first_frame_warning(kilted) is None and first_frame_warning(kilted, "rmw_cyclonedds_cpp") is None


def test_large_data_profile_is_set_only_when_the_user_has_none():
    # Fast DDS 3 (Kilted) reads FASTDDS_..., Fast DDS 2 (Humble, Jazzy) only FASTRTPS_...; Kilted's
    # rmw warns that the old name is deprecated, so each gets its own name and only that one.
    for distro, name in (("kilted", "FASTDDS_DEFAULT_PROFILES_FILE"), ("jazzy", "FASTRTPS_DEFAULT_PROFILES_FILE"),
                         ("humble", "FASTRTPS_DEFAULT_PROFILES_FILE"), ("rolling", "FASTDDS_DEFAULT_PROFILES_FILE")):
        assert profile_variables({"ROS_DISTRO": distro}) == (name,)
        env = {"ROS_DISTRO": distro}
        use_large_data_profile(env)
        assert env == {"ROS_DISTRO": distro, name: str(DEFAULT_PROFILE)}
    assert DEFAULT_PROFILE.name == "fastdds_large_data.xml"
    # The user's own profile is kept, moved to the name this Fast DDS reads.
    mine = {"ROS_DISTRO": "jazzy", "FASTDDS_DEFAULT_PROFILES_FILE": "/etc/my.xml"}
    use_large_data_profile(mine)
    assert mine == {"ROS_DISTRO": "jazzy", "FASTRTPS_DEFAULT_PROFILES_FILE": "/etc/my.xml"}
    mine = {"ROS_DISTRO": "kilted", "FASTDDS_DEFAULT_PROFILES_FILE": "/etc/my.xml"}
    use_large_data_profile(mine)
    assert mine == {"ROS_DISTRO": "kilted", "FASTDDS_DEFAULT_PROFILES_FILE": "/etc/my.xml"}
    # Without ROS_DISTRO (PyPI wheels), the installed Fast DDS wheel decides.
    assert len(profile_variables({})) == 1
    off = {"INSTRUCTSAM_FASTDDS_PROFILE": "0"}
    use_large_data_profile(off)
    assert "FASTDDS_DEFAULT_PROFILES_FILE" not in off


def test_qos_profiles():
    best = stream_qos("best_effort", 1)
    assert best.reliability == ReliabilityPolicy.BEST_EFFORT and best.depth == 1
    assert stream_qos("reliable", 3).reliability == ReliabilityPolicy.RELIABLE
    latched = instruction_qos()
    assert latched.durability == DurabilityPolicy.TRANSIENT_LOCAL and latched.reliability == ReliabilityPolicy.RELIABLE
    with pytest.raises(ValueError):
        stream_qos("sometimes", 1)
    with pytest.raises(ValueError):
        stream_qos("reliable", 0)


def test_stream_stats_summary_by_hand():
    stats = StreamStats(fps_window_s=5.0)
    # Finished at t = 10, 10.5, 11, 11.5: 3 intervals over 1.5 s -> 2 fps.
    for k, latency in enumerate([0.1, 0.2, 0.3, 0.4]):
        stats.record(FrameTiming(10.0 + 0.5 * k, latency, latency / 2, 0.01 * k))
    stats.count("dropped_stale", "too old")
    stats.count("dropped_replaced")
    summary = stats.summary(now=12.0)
    assert summary["fps"] == pytest.approx(2.0)
    assert summary["processing_latency_median"] == pytest.approx(0.25)
    assert summary["model_latency_median"] == pytest.approx(0.125)
    assert stats.dropped == 2 and stats.processed == 4 and stats.last_problem == "too old"
    assert stats.summary(now=100.0)["fps"] == 0.0  # nothing finished recently


def test_diagnostics_message_carries_the_counters():
    from builtin_interfaces.msg import Time

    stats = StreamStats()
    stats.count("received")
    stats.count("dropped_bad_input", "unsupported encoding '32FC1'")
    array = build_diagnostics("/cam/segment_node: segmentation", "instructsam", 1, "warn", stats, {"state": "active"}, Time(sec=5), "cpu")
    status = array.status[0]
    values = {kv.key: kv.value for kv in status.values}
    assert status.level == b"\x01" and status.message == "warn"
    assert values["frames_received"] == "1" and values["frames_dropped"] == "1" and values["dropped_bad_input"] == "1"
    assert values["last_problem"] == "unsupported encoding '32FC1'" and values["state"] == "active"
    assert values["device_memory_kind"] == "process_rss" and float(values["device_memory_mb"]) > 1.0


class RecordingLogger:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def warning(self, message: str) -> None:
        self.lines.append(message)


def test_problem_log_reports_the_first_and_holds_back_repeats_per_kind():
    logger = RecordingLogger()
    problems = ProblemLog(logger, period_s=3600.0)
    problems.warn("bad_image", "frame dropped: unsupported encoding 'foo'")
    problems.warn("bad_image", "frame dropped: unsupported encoding 'foo'")
    problems.warn("bad_image", "frame dropped: empty image")
    problems.warn("stale", "frame dropped: too old")
    assert logger.lines == ["frame dropped: unsupported encoding 'foo'", "frame dropped: too old"]
    problems._last["bad_image"] = -1e9  # the period has passed
    problems.warn("bad_image", "frame dropped: empty image")
    assert logger.lines[-1] == "frame dropped: empty image (2 more like this since the last report)"


def test_build_installs_what_ros2_run_and_ros2_launch_need():
    """The colcon install space holds the executables, launch file, config and both packages."""
    from instructsam_ros import generated_install_dir

    prefix = generated_install_dir()
    assert prefix is not None, "scripts/build_ros.sh did not produce an install space"
    share = prefix / "share" / "instructsam_ros"
    assert (share / "launch" / "segment.launch.py").read_text() == LAUNCH.read_text()
    for name in ("segment_node.yaml", "fastdds_large_data.xml"):
        assert (share / "config" / name).is_file()
    for exe in ("segment_node", "demo"):
        script = prefix / "lib" / "instructsam_ros" / exe
        assert script.is_file() and script.stat().st_mode & 0o111
        assert f"from instructsam_ros.{exe} import main" in script.read_text()
    site = next(prefix.glob("lib/python3*/site-packages"))
    assert (site / "instructsam_ros" / "msg" / "_instance.py").is_file()  # generated
    assert (site / "instructsam_ros" / "segment_node" / "node.py").is_file()  # hand-written, same package
    assert (site / "instructsam_core" / "predictor.py").is_file()
    assert (share / "package.xml").is_file()
