"""Data mixtures: which training files a stage reads and how often (the release's stage lists).

A mixture file is either YAML,
    datasets:
      - {name: refcoco, path: refcoco.json, repeat: 10}
      - {name: inst2seg, path: inst2seg/train.json, repeat: 1, image_root: inst2seg/images}
or the release's own list (`data/stage1.txt`, any file ending in .txt): one `file.json repeat`
per line (repeat 1 when left out; empty lines and lines starting with # are skipped).
`path` is relative to the JSON directory (recipe `data.json_dir`, itself relative to the data
root given on the command line; the release keeps its files in DATA/training), `image_root` and
the records' image paths to the data root. `repeat` may be fractional: 2.5 = every record twice
plus a fixed (seeded) half of them once more. Every file is looked for before any is read: the
missing ones are named in one error.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from instructsam_core.errors import UserError
from instructsam_core.training.records import ReadReport, Record, read_records


@dataclass
class MixtureEntry:
    name: str
    path: str
    repeat: float = 1.0
    image_root: str | None = None


def parse_mixture(spec: Any, where: str) -> list[MixtureEntry]:
    """Check a mixture (the `datasets` list, or a dict holding it) and return its entries."""
    if isinstance(spec, dict):
        spec = spec.get("datasets")
    if not isinstance(spec, list) or not spec:
        raise UserError(f"{where}: a mixture needs a non-empty 'datasets' list")
    entries = []
    for index, item in enumerate(spec):
        if not isinstance(item, dict):
            raise UserError(f"{where}: datasets[{index}] must be a mapping with name/path/repeat")
        unknown = set(item) - {"name", "path", "repeat", "image_root"}
        if unknown:
            raise UserError(f"{where}: datasets[{index}] has unknown keys {sorted(unknown)}")
        path = item.get("path")
        if not isinstance(path, str) or not path:
            raise UserError(f"{where}: datasets[{index}] needs a 'path' (relative to the data root)")
        repeat = item.get("repeat", 1)
        if isinstance(repeat, bool) or not isinstance(repeat, (int, float)) or repeat <= 0:
            raise UserError(f"{where}: datasets[{index}].repeat must be a positive number, got {repeat!r}")
        image_root = item.get("image_root")
        if image_root is not None and not isinstance(image_root, str):
            raise UserError(f"{where}: datasets[{index}].image_root must be a path string")
        entries.append(MixtureEntry(str(item.get("name") or Path(path).stem), path, float(repeat), image_root))
    return entries


def parse_release_list(text: str, where: str) -> list[MixtureEntry]:
    """The release's `file.json repeat` lines."""
    entries = []
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) > 2 or (len(parts) == 2 and not parts[1].isdigit()) or (len(parts) == 2 and int(parts[1]) < 1):
            raise UserError(f"{where}:{number}: expected 'file.json repeat' (a positive whole repeat), got {line!r}")
        repeat = int(parts[1]) if len(parts) == 2 else 1
        entries.append(MixtureEntry(Path(parts[0]).stem, parts[0], float(repeat)))
    if not entries:
        raise UserError(f"{where}: the mixture list names no file")
    return entries


def load_mixture_file(path: str | Path) -> list[MixtureEntry]:
    """A YAML mixture, or the release's .txt list."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"mixture file {path} does not exist")
    if path.suffix == ".txt":
        return parse_release_list(path.read_text(encoding="utf-8"), str(path))
    try:
        spec = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise UserError(f"{path}: not valid YAML ({str(error).splitlines()[0]})") from None
    return parse_mixture(spec, str(path))


def repeat_records(records: list[Record], repeat: float, seed: int) -> list[Record]:
    """`int(repeat)` full copies plus a seeded random fraction `repeat % 1` of the records."""
    whole = int(repeat)
    out = records * whole
    fraction = repeat - whole
    if fraction > 0 and records:
        count = int(round(fraction * len(records)))
        picked = sorted(random.Random(seed).sample(range(len(records)), count))
        out.extend(records[i] for i in picked)
    return out


def build_mixture(
    entries: list[MixtureEntry],
    data_root: str | Path,
    skip_bad: bool = False,
    seed: int = 0,
    json_dir: str = "",
) -> tuple[list[Record], dict[str, ReadReport]]:
    """Read every dataset of the mixture and repeat it; returns the records and a report per dataset
    (a file listed twice is read once and reported under the name of its first entry)."""
    data_root = Path(data_root)
    if not data_root.is_dir():
        raise UserError(f"data root {data_root} is not a directory")
    files = data_root / json_dir
    missing = sorted({entry.path for entry in entries if not (files / entry.path).is_file()})
    if missing:
        raise UserError(f"{len(missing)} training file(s) of the mixture are not in {files}: {', '.join(missing)}")
    samples: list[Record] = []
    reports: dict[str, ReadReport] = {}
    read: dict[tuple[str, str | None], list[Record]] = {}
    for index, entry in enumerate(entries):
        key = (entry.path, entry.image_root)
        if key not in read:
            image_root = data_root / entry.image_root if entry.image_root else data_root
            read[key], reports[entry.name] = read_records(files / entry.path, image_root, skip_bad=skip_bad)
        samples.extend(repeat_records(read[key], entry.repeat, seed + index))
    if not samples:
        raise UserError("the data mixture holds no usable sample")
    return samples, reports
