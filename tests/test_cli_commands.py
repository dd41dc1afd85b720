"""Commands other packages contribute to `instructsam` (entry-point group instructsam.commands):
found through the package metadata, run, listed in --help, and a clear line when one is missing."""
from __future__ import annotations

import importlib.metadata
import subprocess
import sys
import types
from pathlib import Path

import pytest

from instructsam_core import cli

REPO = Path(__file__).resolve().parents[1]
GROUP = "instructsam.commands"


def _entry_points(entries: list[importlib.metadata.EntryPoint]):
    """A stand-in for importlib.metadata.entry_points that knows only `entries`."""
    def entry_points(**selection):
        return [e for e in entries if all(getattr(e, key) == value for key, value in selection.items())]

    return entry_points


@pytest.fixture()
def hello_package(monkeypatch):
    """An installed package (as far as the metadata says) contributing `instructsam hello`."""
    module = types.ModuleType("hello_commands")
    calls = []

    def register(subparsers):
        parser = subparsers.add_parser("hello", help="say hello to NAME")
        parser.add_argument("--name", required=True)
        parser.set_defaults(func=lambda args: calls.append(args.name) or 7)

    module.register = register
    monkeypatch.setitem(sys.modules, "hello_commands", module)
    entry = importlib.metadata.EntryPoint(name="hello", value="hello_commands:register", group=GROUP)
    monkeypatch.setattr(importlib.metadata, "entry_points", _entry_points([entry]))
    return calls


def test_the_installed_metadata_contributes_annotate_bag():
    """setup.py's entry point is what the core finds (the package is installed in development mode)."""
    found = cli.contributed_commands()
    assert "annotate-bag" in found
    assert found["annotate-bag"].value == "instructsam_ros.bags.command:register"
    assert "annotate-bag" not in cli.SUBCOMMANDS  # the core does not name the module


def test_a_contributed_command_runs_with_its_own_arguments(hello_package):
    assert cli.main(["hello", "--name", "robot"]) == 7
    assert hello_package == ["robot"]


def test_help_lists_built_in_and_contributed_commands(hello_package, capsys):
    with pytest.raises(SystemExit) as stop:
        cli.main(["--help"])
    assert stop.value.code == 0
    out = capsys.readouterr().out
    assert "say hello to NAME" in out
    assert all(name in out for name in cli.SUBCOMMANDS)


def test_a_contributed_command_never_replaces_a_built_in_one(monkeypatch, tmp_path):
    module = types.ModuleType("impostor")
    module.register = lambda subparsers: pytest.fail("a contributed 'synth' was registered")
    monkeypatch.setitem(sys.modules, "impostor", module)
    entry = importlib.metadata.EntryPoint(name="synth", value="impostor:register", group=GROUP)
    monkeypatch.setattr(importlib.metadata, "entry_points", _entry_points([entry]))
    assert "synth" not in cli.contributed_commands()
    assert cli.main(["synth", "--out", str(tmp_path / "s"), "--n", "1", "--quiet"]) == 0


def test_a_built_in_command_reads_no_package_metadata(monkeypatch, tmp_path):
    def entry_points(**selection):
        raise AssertionError("package metadata read for a built-in command")

    monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)
    assert cli.main(["synth", "--out", str(tmp_path / "s"), "--n", "1", "--quiet"]) == 0


def test_annotate_bag_without_the_ros_package_says_what_to_install(monkeypatch, capsys):
    monkeypatch.setattr(importlib.metadata, "entry_points", _entry_points([]))
    assert cli.main(["annotate-bag", "--bag", "in", "--topics", "/camera", "--instruction", "cups", "--out", "out"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("instructsam annotate-bag: error: ")
    assert "pip install" in err and "[ros]" in err


def test_a_contributed_command_that_does_not_import(monkeypatch, capsys):
    """Listed as unavailable in --help; running it is one line with the install hint."""
    entry = importlib.metadata.EntryPoint(name="annotate-bag", value="no_such_package_here.command:register", group=GROUP)
    monkeypatch.setattr(importlib.metadata, "entry_points", _entry_points([entry]))
    assert cli.main(["annotate-bag", "--bag", "in"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pip install" in err and "no_such_package_here" in err
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    assert "unavailable" in capsys.readouterr().out


def test_annotate_bag_without_rosbags_says_what_to_install(tmp_path):
    """The ROS package is there but not its extra (rosbags): --help still works, a run says
    which extra to install, in one line."""
    blocker = (
        "import sys\n"
        "class NoRosbags:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('rosbags', 'apsw'):\n"
        "            raise ImportError(f'No module named {name!r}')\n"
        "sys.meta_path.insert(0, NoRosbags())\n"
        "from instructsam_core.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    run = lambda *args: subprocess.run([sys.executable, "-c", blocker, *args], cwd=REPO, capture_output=True,  # noqa: E731
                                       text=True, timeout=300)
    helped = run("annotate-bag", "--help")
    assert helped.returncode == 0 and "--topics" in helped.stdout, helped.stderr
    result = run("annotate-bag", "--bag", str(tmp_path / "in"), "--topics", "/camera", "--instruction", "cups",
                 "--out", str(tmp_path / "out"))
    assert result.returncode == 2
    err = result.stderr.strip()
    assert len(err.splitlines()) == 1, err
    assert "annotate-bag needs rosbags and rosbags-image: pip install -e '.[ros]'" in err
