"""The shape of the package code, read from the sources (ast, nothing imported): no import
circles, a core that knows nothing of ROS, annotate-bag free of rclpy, and each sub-package of
instructsam_ros importing only the rooms docs/architecture.md allows it."""
from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("instructsam_core", "instructsam_ros")

# What the core must never import: the ROS package, ROS itself, the bag library, ROS messages.
ROS_MODULES = ("instructsam_ros", "rclpy", "rosbags", "rosidl_runtime_py", "sensor_msgs", "std_msgs", "builtin_interfaces",
               "geometry_msgs", "diagnostic_msgs", "lifecycle_msgs", "rcl_interfaces", "launch", "launch_ros")
# What must not run where there is no ROS installation (rosbags is fine there).
RCLPY_AND_MESSAGES = tuple(m for m in ROS_MODULES if m not in ("instructsam_ros", "rosbags")) + (
    "instructsam_ros.msg", "instructsam_ros.srv", "instructsam_ros.interfaces")

# instructsam_ros's rooms and the other rooms each may import (besides itself, instructsam_core and
# the package's top-level modules): data flows from the node and the tools down to the shared rooms.
ROOMS = {
    "messages": set(),
    "depth": set(),
    "dds": set(),
    "bags": {"messages"},
    "segment_node": {"messages", "depth", "dds"},
    "demo": {"messages", "depth", "dds", "segment_node"},
    "benchmark": {"messages", "depth", "dds", "segment_node", "demo"},
}


@dataclass(frozen=True)
class Import:
    importer: str
    target: str  # the module named, made absolute
    line: int
    lazy: bool  # inside a function: runs when called
    type_only: bool  # under `if TYPE_CHECKING:`: never runs


def source_modules() -> dict[str, Path]:
    """Dotted name -> file, for every module of the two packages (a package is its __init__.py)."""
    found = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


MODULES = source_modules()


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports_of(name: str) -> list[Import]:
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: list[Import] = []

    def visit(node: ast.AST, lazy: bool, type_only: bool) -> None:
        if isinstance(node, ast.Import):
            found.extend(Import(name, alias.name, node.lineno, lazy, type_only) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                found.append(Import(name, submodule if submodule in MODULES else base, node.lineno, lazy, type_only))
        for child in ast.iter_child_nodes(node):
            inner = isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            guarded = isinstance(node, ast.If) and _is_type_checking(node.test) and child in node.body
            visit(child, lazy or inner, type_only or guarded)

    visit(ast.parse(path.read_text(encoding="utf-8"), str(path)), False, False)
    return found


IMPORTS = {name: imports_of(name) for name in MODULES}


def known(target: str) -> str | None:
    """The module of ours an import runs: the longest source module the name starts with."""
    parts = target.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in MODULES:
            return candidate
    return None


def runtime_edges() -> dict[str, set[str]]:
    """importer -> the modules of ours its import statements execute (type-only imports never
    run). Importing a.b.c also runs the packages a and a.b, unless the importer lies inside them
    (then they are already being imported)."""
    edges: dict[str, set[str]] = {name: set() for name in MODULES}
    for name, found in IMPORTS.items():
        for item in found:
            target = known(item.target)
            if target is None or item.type_only:
                continue
            edges[name].add(target)
            parts = target.split(".")
            for end in range(1, len(parts)):
                parent = ".".join(parts[:end])
                if parent in MODULES and not name.startswith(parent + "."):
                    edges[name].add(parent)
        edges[name].discard(name)
    return edges


def strongly_connected(edges: dict[str, set[str]]) -> list[set[str]]:
    """Tarjan's algorithm (iterative): the components of mutually reachable modules."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                components.append(component)
    return components


def _circle_path(component: set[str], edges: dict[str, set[str]]) -> str:
    """One circle through the component, for the failure message: a -> b -> ... -> a."""
    start = min(component)
    path, seen = [start], {start}
    while True:
        step = sorted(edges[path[-1]] & component)
        back = [m for m in step if m == start]
        if back and len(path) > 1:
            return " -> ".join(path + [start])
        fresh = [m for m in step if m not in seen]
        nxt = fresh[0] if fresh else step[0]
        if nxt in seen:
            return " -> ".join(path[path.index(nxt):] + [nxt])
        path.append(nxt)
        seen.add(nxt)


def test_the_sources_are_found():
    """The scan sees both packages and their sub-packages (a test that scans nothing passes anything)."""
    assert {"instructsam_core.cli", "instructsam_core.synth", "instructsam_ros.segment_node.node",
            "instructsam_ros.depth.step", "instructsam_ros.bags.command"} <= set(MODULES)
    assert len(MODULES) > 60


def test_the_circle_search_finds_a_circle():
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    components = [c for c in strongly_connected(edges) if len(c) > 1]
    assert components == [{"a", "b", "c"}]
    assert _circle_path(components[0], edges) == "a -> b -> c -> a"


def test_no_import_circles():
    """Every import counts that can run (at module level or inside a function); a lazy import
    only hides a circle until the function is called."""
    edges = runtime_edges()
    circles = [c for c in strongly_connected(edges) if len(c) > 1]
    assert not circles, "import circles:\n" + "\n".join(_circle_path(c, edges) for c in circles)


def _matches(target: str, names: tuple[str, ...]) -> bool:
    return any(target == n or target.startswith(n + ".") for n in names)


def test_the_core_imports_nothing_of_ros():
    """instructsam_core installs and runs without ROS: no import of instructsam_ros, rclpy,
    rosbags or a ROS message package anywhere in it, lazy or type-only ones included."""
    found = sorted({f"{MODULES[i.importer].relative_to(REPO)}:{i.line} imports {i.target}"
                    for name, items in IMPORTS.items() if name.startswith("instructsam_core")
                    for i in items if _matches(i.target, ROS_MODULES)})
    assert not found, "\n".join(found)


def test_instructsam_ros_rooms_import_only_the_rooms_below_them():
    top_level = {name for name in MODULES if name.count(".") == 1 and name.split(".")[1] not in ROOMS} | {"instructsam_ros"}
    rooms_seen = {name.split(".")[1] for name in MODULES if name.startswith("instructsam_ros.") and name.count(".") >= 1}
    assert set(ROOMS) <= rooms_seen, "a room of ROOMS has no module"
    unexpected_rooms = {room for room in rooms_seen if room not in ROOMS and f"instructsam_ros.{room}" not in top_level}
    assert not unexpected_rooms, f"sub-packages without a rule in ROOMS: {unexpected_rooms}"
    wrong = []
    for name, items in IMPORTS.items():
        if not name.startswith("instructsam_ros"):
            continue
        room = name.split(".")[1] if name.count(".") >= 1 and name.split(".")[1] in ROOMS else None
        allowed = set() if room is None else ROOMS[room] | {room}
        for item in items:
            target = known(item.target)
            if target is None or not target.startswith("instructsam_ros.") or target in top_level:
                continue
            target_room = target.split(".")[1]
            if target_room not in allowed:
                where = f"the top-level module {name}" if room is None else f"{room}/"
                wrong.append(f"{MODULES[name].relative_to(REPO)}:{item.line}: {where} imports {target}")
    assert not wrong, "\n".join(sorted(set(wrong)))


def _module_level_closure(starts: list[str]) -> dict[str, list[str]]:
    """Every module of ours the module-level imports of `starts` run, with the third-party
    modules each of them imports at module level."""
    seen: dict[str, list[str]] = {}
    todo = list(starts)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen[name] = []
        for item in IMPORTS[name]:
            if item.lazy or item.type_only:
                continue
            target = known(item.target)
            if target is None or _matches(item.target, RCLPY_AND_MESSAGES):
                seen[name].append(item.target)
            else:
                todo.append(target)
                parts = target.split(".")
                todo += [".".join(parts[:end]) for end in range(1, len(parts)) if ".".join(parts[:end]) in MODULES]
    return seen


@pytest.mark.parametrize("start", [
    "instructsam_ros.bags.command", "instructsam_ros.bags.annotate",  # annotate-bag runs without ROS
    "instructsam_ros.depth.geometry", "instructsam_ros.depth.pairing",  # "without ROS" in their docstrings
    "instructsam_ros.messages.mask_layout", "instructsam_ros.messages.tracking", "instructsam_ros.messages.marker_layout",
    "instructsam_ros.segment_node.cameras", "instructsam_ros.segment_node.segmenter",
])
def test_ros_free_modules_load_nothing_of_ros(start):
    closure = _module_level_closure([start])
    leaks = {name: [t for t in targets if _matches(t, RCLPY_AND_MESSAGES)] for name, targets in closure.items()}
    leaks = {name: targets for name, targets in leaks.items() if targets}
    assert not leaks, f"{start} loads ROS through {leaks}"
