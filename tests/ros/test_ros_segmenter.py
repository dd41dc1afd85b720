"""The node's model side with the real tiny predictor: phrase caching, ids, instruction state."""
from __future__ import annotations

import numpy as np
import pytest

import torch

from instructsam_ros.segment_node.segmenter import BadInstructionError, DeviceUnavailableError, InstructionState, load_segmenter, resolve_device

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


def test_inference_layout_parameter_overrides_the_models_own(tiny_model_dir):
    from instructsam_core.configuration import INFERENCE_LAYOUTS
    from instructsam_ros.segment_node.parameters import INFERENCE_LAYOUTS as ROS_LAYOUTS, validate

    assert ROS_LAYOUTS == INFERENCE_LAYOUTS

    own, _ = load_segmenter(str(tiny_model_dir), "cpu", "auto", 0.0, warmup=False, inference_layout="")
    release, _ = load_segmenter(str(tiny_model_dir), "cpu", "auto", 0.0, warmup=False, inference_layout="release")
    assert own.predictor.model.config.inference_layout == "trained"  # a model written here
    assert release.predictor.model.config.inference_layout == "release"
    scores = [[i.score for i in seg.segment_stream(frame(), "red circle", 1, [], threshold=0.0,
                                                    max_instances=100).prediction.instances] for seg in (own, release)]
    assert len(scores[0]) == len(scores[1]) == 10 and scores[0] != scores[1]
    reason = validate("inference_layout", "paper")
    assert reason == "inference_layout must be release, trained, or empty (the model's config.json)"
    assert validate("inference_layout", "") is None


# ----------------------------------------------------------------------------- several cameras
def camera_request(image, instruction, instruction_id=1, fixed=(), admit=None):
    from instructsam_ros.segment_node.segmenter import PhraseCache, StreamRequest
    from instructsam_ros.messages.tracking import InstanceTracker

    return StreamRequest(image, instruction, instruction_id, list(fixed), PhraseCache(), InstanceTracker(), admit)


def test_a_batch_of_cameras_gives_each_what_it_would_get_alone(segmenter):
    """Different sizes, instructions and fixed phrases in one model call: every camera's result
    is its own (phrases, size, scores, masks, ids) and equals that frame's result alone."""
    requests = [
        camera_request(frame(10, 48, 72), "red circle"),
        camera_request(frame(11, 37, 91), "blue squares", instruction_id=2),
        camera_request(frame(12, 64, 64), "shapes", instruction_id=3, fixed=["ring", "green triangle"]),
    ]
    batch = segmenter.segment_batch(requests, threshold=0.0, max_instances=100)
    assert [r.batch_size for r in batch] == [3, 3, 3]
    assert len({r.model_latency for r in batch}) == 1  # one model call
    for request, result in zip(requests, batch):
        alone = camera_request(request.rgb, request.instruction, request.instruction_id, request.fixed_phrases)
        single = segmenter.segment_batch([alone], threshold=0.0, max_instances=100)[0]
        assert result.prediction.image_size == request.rgb.shape[:2] == single.prediction.image_size
        assert result.prediction.phrases == single.prediction.phrases
        assert result.instruction_id == request.instruction_id
        assert result.ids == single.ids == list(range(1, len(result.ids) + 1))  # a fresh tracker per camera
        np.testing.assert_allclose([i.score for i in result.prediction.instances],
                                   [i.score for i in single.prediction.instances], atol=1e-4)
        agree = np.mean([np.mean(a.mask == b.mask) for a, b in zip(result.prediction.instances, single.prediction.instances)])
        assert agree > 0.99
    assert [r.prediction.phrases for r in batch] == [["red circle"], ["blue squares"], ["ring", "green triangle"]]


def test_each_camera_has_its_own_ids_and_its_own_generated_phrases(segmenter):
    image = frame(13)
    front, wrist = camera_request(image, "ring"), camera_request(image, "ring")
    first = segmenter.segment_batch([front, wrist], threshold=0.0, max_instances=100)
    # The same picture on two cameras: two trackers, each numbering its own instances from 1.
    assert first[0].ids == first[1].ids == list(range(1, 11))
    # The next frame: each camera's tracker keeps its own tracks (a shared tracker would have
    # numbered wrist's first instances 11..20).
    again = segmenter.segment_batch([front, wrist], threshold=0.0, max_instances=100)
    for before, after in zip(first, again):
        nonempty = [i for i, box in enumerate(before.boxes) if box != (0, 0, 0, 0)]
        assert nonempty and [after.ids[i] for i in nonempty] == [before.ids[i] for i in nonempty]
    # A reasoning instruction is generated once per camera, from that camera's frames.
    a, b = camera_request(frame(14), REASONING, 7), camera_request(frame(15), REASONING, 7)
    generated = segmenter.segment_batch([a, b], threshold=0.0, max_instances=100, empty_retry_period=0.0)
    assert [r.generated for r in generated] == [True, True]
    assert a.cache.phrases == generated[0].prediction.phrases and b.cache.phrases == generated[1].prediction.phrases
    later = segmenter.segment_batch([a, b], threshold=0.0, max_instances=100, empty_retry_period=0.0)
    assert [r.generated for r in later] == [False, False]


def test_a_frame_the_model_cannot_take_costs_only_its_own_result(segmenter):
    """Qwen-VL's resize refuses an aspect ratio over 200 (the node refuses such frames before the
    model; the segmenter still must not let one frame fail a batch)."""
    good = camera_request(frame(16), "ring")
    bad = camera_request(np.zeros((1, 600, 3), np.uint8), "ring")
    asked = []
    stale = camera_request(frame(17), "ring", admit=lambda: asked.append(segmenter._model_lock.locked()) or False)
    outcomes = segmenter.segment_batch([bad, good, stale], threshold=0.0, max_instances=100)
    assert isinstance(outcomes[0], ValueError) and "aspect ratio" in str(outcomes[0])
    assert outcomes[1].prediction.phrases == ["ring"] and len(outcomes[1].ids) == 10
    assert outcomes[2] is None and asked == [True]  # asked with the model held, then not run
