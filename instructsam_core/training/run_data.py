"""The data of a run: the recipe's mixture read, every sample checked, the dataset and its options.

Every distinct record is checked before the first step (dataset.check_record), each process a
share of them: an unusable one stops the run now, naming it, instead of when it is drawn hours
later; with data.skip_bad (--skip-bad) unusable ones are left out and counted.
"""
from __future__ import annotations

from pathlib import Path

from instructsam_core.errors import UserError
from instructsam_core.training.dataset import InstructSegDataset, TargetOptions, check_record
from instructsam_core.training.mixture import build_mixture, load_mixture_file, parse_mixture
from instructsam_core.training.records import Record
from instructsam_core.training.samples import SampleOptions


def sample_options(recipe) -> SampleOptions:
    data = recipe["data"]
    return SampleOptions(samples=data["samples"], style=data["instruction_style"], multi_objects=data["multi_objects"],
                         merged_phrase=data["merged_phrase"], point_annotations=data["point_annotations"],
                         instseg_single_fraction=float(data["instseg_single_phrase_fraction"]))


def target_options(recipe) -> TargetOptions:
    loss = recipe["loss"]
    return TargetOptions(no_target_phrase=loss["no_target_phrase"], targetless_samples=loss["targetless_samples"],
                         box_samples=loss["box_samples"])


def read_mixture(recipe, data_root: Path, is_main: bool) -> list[Record]:
    """The records of the recipe's mixture (repeats applied), with a report line per dataset."""
    data = recipe["data"]
    if isinstance(data["mixture"], str):
        entries = load_mixture_file(recipe.resolve(data["mixture"]))
    else:
        entries = parse_mixture(data["mixture"], f"{recipe.path}: data.mixture")
    records, reports = build_mixture(entries, data_root, skip_bad=data["skip_bad"], seed=recipe["seed"],
                                     json_dir=data["json_dir"])
    if is_main:
        for name, report in reports.items():
            print(f"data {name}: {report.summary()}", flush=True)
    return records


def check_records(records: list[Record], accelerator, skip_bad: bool, progress: bool) -> tuple[list[Record], int]:
    """(the usable records, how many distinct ones were not); see the module docstring."""
    unique = list({id(record): record for record in records}.values())
    rank, world = accelerator.process_index, accelerator.num_processes
    share = range(rank, len(unique), world)
    if accelerator.is_main_process and progress:
        from tqdm import tqdm

        share = tqdm(share, desc="check data", unit="sample", dynamic_ncols=True, leave=False)
    found = [(index, reason) for index in share if (reason := check_record(unique[index])) is not None]
    if world > 1:
        from accelerate.utils import gather_object

        found = gather_object(found)
    found.sort()
    if not found:
        return records, 0
    first = found[0][1]
    if not skip_bad:
        raise UserError(f"{len(found)} of {len(unique)} training samples cannot be used (first: {first}); "
                        "fix them, or pass --skip-bad to leave them out")
    bad = {id(unique[index]) for index, _ in found}
    kept = [record for record in records if id(record) not in bad]
    if not kept:
        raise UserError(f"none of the {len(unique)} training samples can be used (first: {first})")
    if accelerator.is_main_process:
        print(f"left out {len(found)} of {len(unique)} training samples that cannot be used (first: {first})",
              flush=True)
    return kept, len(found)


def build_dataset(recipe, data_root: Path, mask_size: int, accelerator, progress: bool) -> tuple[InstructSegDataset, int]:
    """(the run's dataset, the number of unusable records left out)."""
    records = read_mixture(recipe, data_root, accelerator.is_main_process)
    records, unusable = check_records(records, accelerator, recipe["data"]["skip_bad"], progress)
    dataset = InstructSegDataset(records, mask_size, sample_options(recipe), target_options(recipe),
                                 seed=recipe["seed"], skip_bad=recipe["data"]["skip_bad"])
    return dataset, unusable
