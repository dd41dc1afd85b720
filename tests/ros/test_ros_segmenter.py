"""The node's model side with the real tiny predictor: phrase caching, ids, instruction state."""
from __future__ import annotations

import numpy as np
import pytest

import torch

from instructsam_ros.segmenter import BadInstructionError, DeviceUnavailableError, InstructionState, load_segmenter, resolve_device

REASONING = "which shapes could roll like a wheel?"  # not a bare phrase: needs generation


@pytest.fixture(scope="module")
def segmenter(tiny_model_dir):
    seg, _ = load_segmenter(str(tiny_model_dir), "cpu", "auto", 0.0, warmup=False)
    seg.predictor.max_new_tokens = 12  # a random model rambles; a short answer tests the same path
    return seg


def frame(seed: int = 0, height: int = 48, width: int = 72) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def stream(seg, image, instruction, instruction_id, fixed=(), **kw):
    return seg.segment_stream(image, instruction, instruction_id, list(fixed), threshold=0.0, max_instances=100, **kw)


def test_generation_runs_once_per_instruction(segmenter):
    segmenter.forget_phrases()
    first = stream(segmenter, frame(0), REASONING, 1, empty_retry_period=0.0)
    second = stream(segmenter, frame(1), REASONING, 1, empty_retry_period=0.0)
    assert first.generated and not second.generated
    assert second.prediction.phrases == first.prediction.phrases
    # A new instruction id (even with the same text) generates again.
    assert stream(segmenter, frame(2), REASONING, 2, empty_retry_period=0.0).generated


def test_regenerate_period_forces_generation(segmenter):
    segmenter.forget_phrases()
    stream(segmenter, frame(0), REASONING, 5)
    assert stream(segmenter, frame(0), REASONING, 5, regenerate_period=1e-9).generated


def test_fixed_phrases_never_generate_and_give_ten_queries_each(segmenter):
    segmenter.forget_phrases()
    result = stream(segmenter, frame(3), REASONING, 1, fixed=["red circle", "ring"])
    assert not result.generated
    assert result.prediction.phrases == ["red circle", "ring"]
    assert len(result.prediction.instances) == 20  # threshold 0: every query
    assert {i.phrase for i in result.prediction.instances} == {"red circle", "ring"}


def test_results_are_at_input_resolution_with_consistent_boxes(segmenter):
    result = stream(segmenter, frame(4, 37, 91), "red circle", 1, fixed=["red circle"])
    assert result.prediction.image_size == (37, 91)
    for instance, box in zip(result.prediction.instances, result.boxes):
        assert instance.mask.shape == (37, 91)
        rows, cols = np.nonzero(instance.mask)
        if rows.size:
            assert box == (cols.min(), rows.min(), cols.max() + 1, rows.max() + 1)
        else:
            assert box == (0, 0, 0, 0)


def test_same_frame_twice_keeps_every_id(segmenter):
    image = frame(5)
    first = stream(segmenter, image, "ring", 9, fixed=["ring"])
    second = stream(segmenter, image, "ring", 9, fixed=["ring"])
    nonempty = [i for i, b in enumerate(first.boxes) if b != (0, 0, 0, 0)]
    assert nonempty, "the tiny model gave only empty masks"
    assert [second.ids[i] for i in nonempty] == [first.ids[i] for i in nonempty]
    assert len(set(first.ids)) == len(first.ids)


def test_max_instances_keeps_the_best_scores(segmenter):
    full = stream(segmenter, frame(6), "ring", 1, fixed=["ring"])
    capped = segmenter.segment_stream(frame(6), "ring", 1, ["ring"], threshold=0.0, max_instances=3)
    assert [i.score for i in capped.prediction.instances] == [i.score for i in full.prediction.instances[:3]]


def test_one_shot_ids_are_sequential(segmenter):
    result = segmenter.segment_once(frame(7), "ring", ["ring", "square"], 0.0, 100)
    assert result.ids == list(range(1, 21))


def test_instruction_state_refuses_empty_and_long_instructions():
    state = InstructionState()
    assert state.set("  find the cups ") == ("find the cups", 1)
    with pytest.raises(BadInstructionError, match="empty"):
        state.set("   ")
    with pytest.raises(BadInstructionError, match="2001 characters"):
        state.set("x" * 2001)
    assert state.set("find the cups") == ("find the cups", 2)  # the same text again is a new instruction
    assert state.snapshot()[:2] == ("find the cups", 2)


def test_a_device_this_machine_lacks_is_named_before_any_model_is_built():
    missing = f"cuda:{torch.cuda.device_count() + 6}"
    with pytest.raises(DeviceUnavailableError, match=f"device '{missing}' (is not available|does not exist)"):
        resolve_device(missing)
    # Refused before the model directory is even read.
    with pytest.raises(DeviceUnavailableError, match=missing):
        load_segmenter("/nonexistent/model_dir", missing, "auto", 0.3, warmup=False)
    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")


def test_the_stream_asks_whether_a_frame_is_still_wanted_once_the_model_is_free(segmenter):
    asked = []

    def stale() -> bool:
        asked.append(segmenter._model_lock.locked())
        return False

    assert stream(segmenter, frame(8), "ring", 1, fixed=["ring"], admit=stale) is None
    assert asked == [True]  # asked while holding the model, not before waiting for it
    assert stream(segmenter, frame(8), "ring", 1, fixed=["ring"], admit=lambda: True) is not None


def test_sam3_config_parameter_overrides_where_sam3_comes_from(tmp_path):
    """A release directory whose mask_decoder_model is a hub id: the published SAM3 sizes do not
    fit its tiny detector (the load fails, naming sam3_config); the parameter gives the right one."""
    import json

    from releasemaker import build_release_directory

    from instructsam_core.errors import CheckpointError

    release = build_release_directory(tmp_path / "release", sam3_dir=tmp_path / "sam3")
    config = json.loads((release / "config.json").read_text())
    config["mask_decoder_model"] = config["mm_mask_decoder"] = "facebook/sam3"
    (release / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="--sam3-config"):
        load_segmenter(str(release), "cpu", "auto", 0.0, warmup=False)
    seg, _ = load_segmenter(str(release), "cpu", "auto", 0.0, warmup=False, sam3_config=str(tmp_path / "sam3"))
    result = seg.segment_stream(frame(), "red circle", 1, [], threshold=0.0, max_instances=100)
    assert result.prediction.phrases == ["red circle"] and len(result.prediction.instances) == 10
