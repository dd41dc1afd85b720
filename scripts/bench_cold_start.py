"""Cold start of an `instructsam` command: wall time of fresh processes, and how much of it is
spent importing modules.

    python scripts/bench_cold_start.py --repeats 5 -- predict --image IMG --instruction "red circles" --out OUT
    python scripts/bench_cold_start.py --tree OTHER_CHECKOUT ... -- predict ...   # compare two checkouts
    python scripts/bench_cold_start.py --evict ... -- predict ...                 # start from a cold page cache

Each repeat runs `python -m instructsam_core.cli ARGS` twice in a new process, from the
checkout given by --tree (default: this one): once plainly (its wall time) and once under
`-X importtime` (the cumulative time of its top-level imports; the flag itself costs a little).
With several --tree values the checkouts take turns within each repeat, so a busy machine slows
them alike. `--evict` asks the kernel to drop the cached pages of the Python environment's files
(posix_fadvise DONTNEED; pages some process still maps stay) before every run, which is what the
first run after a boot or an install sees. Medians are printed, then every sample.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def evict_page_cache(roots: list[Path]) -> int:
    """Drop the cached pages of every file under `roots`; returns how many files were advised."""
    count = 0
    for root in roots:
        for directory, _, files in os.walk(root):
            for name in files:
                try:
                    fd = os.open(os.path.join(directory, name), os.O_RDONLY)
                except OSError:
                    continue
                try:
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                    count += 1
                except OSError:
                    pass
                finally:
                    os.close(fd)
    return count


def import_seconds(stderr: str) -> float:
    """Sum of the cumulative times of the top-level imports in `-X importtime` output."""
    total_us = 0
    for line in stderr.splitlines():
        if not line.startswith("import time:"):
            continue
        fields = line[len("import time:"):].split("|")
        if len(fields) != 3 or not fields[1].strip().isdigit():
            continue
        name = fields[2]
        if len(name) - len(name.lstrip(" ")) == 1:  # one space: a top-level import
            total_us += int(fields[1])
    return total_us / 1e6


def run_once(tree: Path, args: list[str], importtime: bool) -> tuple[float, float | None, int]:
    command = [sys.executable, *(["-X", "importtime"] if importtime else []), "-m", "instructsam_core.cli", *args]
    started = time.perf_counter()
    result = subprocess.run(command, cwd=tree, capture_output=True, text=True)
    wall = time.perf_counter() - started
    return wall, import_seconds(result.stderr) if importtime else None, result.returncode


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--tree", type=Path, action="append",
                        help="checkout to run the command from (repeatable; default: this one)")
    parser.add_argument("--evict", action="store_true", help="drop the environment's cached pages before each run")
    parser.add_argument("--expect", type=int, default=0, help="the exit status the command should have (default 0)")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="-- then the instructsam command and its arguments")
    options = parser.parse_args()
    args = options.args[1:] if options.args[:1] == ["--"] else options.args
    if not args or options.repeats < 1:
        parser.error("give --repeats >= 1 and, after --, an instructsam command")
    trees = [t.resolve() for t in (options.tree or [REPO])]
    roots = [Path(sysconfig.get_paths()["purelib"]), Path(sysconfig.get_paths()["platlib"]), *trees]
    samples: dict[Path, dict[str, list[float]]] = {t: {"wall": [], "imports": []} for t in trees}
    for _ in range(options.repeats):
        for tree in trees:
            for importtime in (False, True):
                if options.evict:
                    evict_page_cache(roots)
                wall, imports, code = run_once(tree, args, importtime)
                if code != options.expect:
                    print(f"{tree}: the command exited with {code}, not {options.expect}", file=sys.stderr)
                    return 1
                if importtime:
                    samples[tree]["imports"].append(imports)
                else:
                    samples[tree]["wall"].append(wall)
    print(f"instructsam {' '.join(args)}  ({options.repeats} repeats{', page cache evicted' if options.evict else ''})")
    for tree, values in samples.items():
        wall, imports = statistics.median(values["wall"]), statistics.median(values["imports"])
        print(f"  {tree}: wall {wall:.2f} s, imports {imports:.2f} s ({100 * imports / wall:.0f} %)")
        print(f"    wall samples {[round(v, 2) for v in values['wall']]}, "
              f"imports {[round(v, 2) for v in values['imports']]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
