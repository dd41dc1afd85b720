"""`instructsam bench --config tiny` prints every stage, and every flow in both inference layouts, with a
measured figure."""
import math
import re

from instructsam_core.cli import main

STAGES = ["preprocess", "vlm_vision_tower", "vlm_prefill_prompt", "vlm_prefill_with_answer", "generation_all_steps",
          "sam3_image_encoder", "sam3_decoder_and_mask_head", "postprocess", "vlm_per_generated_token",
          "vlm_query_block_step"]
FLOWS = ["single_forward", "generation", "release_flow"]


def _figure(out: str, name: str) -> float:
    match = re.search(rf"^\s+{re.escape(name)}\s+([0-9.]+) ms$", out, re.MULTILINE)
    assert match, name
    value = float(match.group(1))
    assert math.isfinite(value) and value > 0
    return value


def test_tiny_bench_reports_each_stage_and_each_flow_in_both_layouts(capsys):
    assert main(["bench", "--config", "tiny", "--repeats", "1", "--warmup", "0", "--width", "96", "--height", "64",
                 "--inference-layout", "release"]) == 0
    out = capsys.readouterr().out
    for stage in STAGES:
        _figure(out, stage)
    assert "stage medians (release layout)" in out and "inference layout: release" in out
    for layout in ("release", "trained"):
        flows = {name: _figure(out, f"{name} ({layout})") for name in FLOWS}
        ratio = re.search(rf"ratio single_forward / generation \({layout}\): ([0-9.]+)", out)
        # The printed ratio is of the unrounded medians; the printed medians are rounded to 0.01 ms.
        assert abs(float(ratio.group(1)) - flows["single_forward"] / flows["generation"]) < 2e-3
    assert "input image: 96x64" in out and "dtype: float32" in out


def test_bench_rejects_bad_arguments(capsys):
    assert main(["bench", "--config", "tiny", "--repeats", "0"]) == 2
    assert "--repeats" in capsys.readouterr().err


def test_bench_rejects_a_pixel_budget_that_is_not_positive(capsys):
    for value in ("-5", "0"):
        assert main(["bench", "--config", "tiny", "--repeats", "1", "--warmup", "0", "--max-pixels", value]) == 2
        err = capsys.readouterr().err.strip()
        assert "--max-pixels" in err and value in err and len(err.splitlines()) == 1
