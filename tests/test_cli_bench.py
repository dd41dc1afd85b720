"""`instructsam bench --config tiny` prints every stage and flow with a measured figure."""
import math
import re

from instructsam_core.cli import main

STAGES = ["preprocess", "vlm_vision_tower", "vlm_prefill_prompt", "vlm_prefill_with_answer", "generation_all_steps",
          "sam3_image_encoder", "sam3_decoder_and_mask_head", "postprocess", "vlm_per_generated_token",
          "vlm_query_block_step", "single_forward", "generation", "release_flow"]


def test_tiny_bench_reports_each_stage_and_the_ratio(capsys):
    assert main(["bench", "--config", "tiny", "--repeats", "1", "--warmup", "0", "--width", "96", "--height", "64"]) == 0
    out = capsys.readouterr().out
    for stage in STAGES:
        match = re.search(rf"^\s+{stage}\s+([0-9.]+) ms$", out, re.MULTILINE)
        assert match, stage
        assert math.isfinite(float(match.group(1))) and float(match.group(1)) > 0
    ratio = re.search(r"ratio single_forward / generation: ([0-9.]+)", out)
    flows = {name: float(re.search(rf"^\s+{name}\s+([0-9.]+) ms$", out, re.MULTILINE).group(1))
             for name in ("single_forward", "generation")}
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
