"""Each command imports what it uses: a fresh interpreter per case, and what it has imported after."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "transformers")


def run_fresh(args: list[str]) -> tuple[int, dict[str, bool], str]:
    """Run `main(args)` in a new interpreter; its exit code, which heavy packages it imported,
    and its stderr."""
    code = ("import json, sys\n"
            "from instructsam_core.cli import main\n"
            f"code = main({args!r})\n"
            f"print(json.dumps({{'code': code, 'imported': {{m: m in sys.modules for m in {HEAVY!r}}}}}))\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    return report["code"], report["imported"], result.stderr


@pytest.fixture(scope="module")
def picture(tmp_path_factory) -> Path:
    from PIL import Image

    path = tmp_path_factory.mktemp("picture") / "p.png"
    Image.new("RGB", (64, 48), (200, 30, 30)).save(path)
    return path


@pytest.mark.parametrize("case", ["missing image", "image is a directory", "out is a file", "threshold",
                                  "empty instruction"])
def test_predict_reports_bad_input_before_importing_the_model_side(tmp_path, picture, case):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    args = {"--image": str(picture), "--instruction": "red circles", "--out": str(tmp_path / "out")}
    if case == "missing image":
        args["--image"] = str(tmp_path / "missing.png")
    elif case == "image is a directory":
        args["--image"] = str(tmp_path)
    elif case == "out is a file":
        args["--out"] = str(a_file)
    elif case == "threshold":
        args["--threshold"] = "2"
    else:
        args["--instruction"] = "   "
    code, imported, stderr = run_fresh(["predict", *[x for pair in args.items() for x in pair]])
    assert code == 2 and len(stderr.strip().splitlines()) == 1
    assert imported == {"torch": False, "transformers": False}


def test_synth_imports_neither_torch_nor_transformers(tmp_path):
    code, imported, _ = run_fresh(["synth", "--out", str(tmp_path / "s"), "--n", "1", "--quiet"])
    assert code == 0 and (tmp_path / "s" / "train.json").exists()
    assert imported == {"torch": False, "transformers": False}


def test_predict_output_stays_free_of_library_progress_bars(tmp_path, picture):
    code, imported, stderr = run_fresh(["predict", "--image", str(picture), "--instruction", "red circles",
                                        "--out", str(tmp_path / "out")])
    assert code == 0 and imported["transformers"]
    assert "Loading weights" not in stderr and "it/s]" not in stderr, stderr[-500:]


def test_annotate_bag_reports_a_missing_bag_before_importing_the_model_side(tmp_path):
    """The contributed command (instructsam_ros, through the entry point) keeps the discipline."""
    code, imported, stderr = run_fresh(["annotate-bag", "--bag", str(tmp_path / "missing"), "--topics", "/camera",
                                        "--instruction", "red circles", "--out", str(tmp_path / "out")])
    assert code == 2 and "does not exist" in stderr and len(stderr.strip().splitlines()) == 1
    assert imported == {"torch": False, "transformers": False}
