"""InstructSamConfig: the config.json of an InstructSAM model directory, as the authors' release writes it.

The release's config.json is a Qwen3-VL config (`model_type: qwen3_vl`) with extra fields
(reference-design.md, "The released checkpoint as written"): `max_seg_nums`, `out_dim`,
`mask_decoder_model`, the `*_token_index` fields and a few training weights. It holds no SAM3
configuration: SAM3's architecture is read from the directory `mask_decoder_model` names
(`sam3_config.py` resolves it). This class reads and writes exactly those fields, so a release
directory loads here and a directory written here loads in the authors' code.

What the release does is named once, in `RELEASE_BEHAVIOUR`: the class defaults are the release's.
Every other value of those fields is a from-scratch aid of this project, recorded explicitly in the
config.json of the models trained with it.
"""
from __future__ import annotations

from pathlib import Path

from transformers import Qwen3VLConfig, Sam3Config

from instructsam_core.errors import CheckpointError
from instructsam_core.model_directory import check_model_sizes, check_sam3_sizes, read_json_object, translate_legacy
from instructsam_core.sam3_config import published_sam3_config, resolve_sam3_config

INSTANCE_SCORES = ("query", "query_x_mask", "semantic_x_mask", "semantic_x_mask_x_region")
PHRASE_PROMPTS = ("ref_markers", "bare")
# inference_layout.py: "release" = the positions and masks of the release's inference (its
# published numbers); "trained" = those of its training forward (what the weights learned).
INFERENCE_LAYOUTS = ("release", "trained")
# The authors' model class; written into `architectures` so their tooling recognises the directory.
RELEASE_ARCHITECTURE = "InstructSAMForConditionalGeneration"

# How the authors' release runs a checkpoint (its inference code). The config defaults below are
# these values; anything else is an option for models trained here and is saved explicitly.
RELEASE_BEHAVIOUR: dict[str, object] = {
    "phrase_prompt": "ref_markers",  # SAM3 prompt = [ref_start] + phrase + [ref_end], cut to 32
    "presence_token": False,  # the release removed SAM3's presence token from the DETR decoder
    "presence_head": False,  # ... and its presence head: score = sigmoid(score logit)
    "region_head": False,
    "instance_score": "query",
    "mask_nms_overlap": None,  # no NMS: every (phrase, query) above the threshold is kept
    "inference_layout": "release",  # 1-D positions, bidirectional prompt, queries see mask_end
}

class InstructSamConfig(Qwen3VLConfig):
    """Configuration of `InstructSamForSegmentation`: Qwen3-VL plus the release's InstructSAM fields.

    Release fields (read and written under the release's names):
    max_seg_nums: size of the instance-query bank (10 in the paper); also SAM3's `num_queries`,
        since the projected bank replaces SAM3's learned object queries.
    out_dim: SAM3's DETR width (256); both projector MLPs end there.
    mask_decoder_model / mm_mask_decoder: path of the SAM3 checkpoint (or its config) the model was
        built from; SAM3's architecture is read from it when it is a local directory.
    seg_token_index, seg_start_token_index, seg_end_token_index, ref_start_token_index,
        ref_end_token_index, region_token_index: ids of `[SEG]`, `<|mask_start|>`, `<|mask_end|>`,
        `<|object_ref_start|>`, `<|object_ref_end|>`, `<REGION>` (cross-checked with the tokenizer).

    Fields of this project:
    sam3_config: the SAM3 detector's config, resolved at load time and never written into
        config.json (it is written as its own directory, which `mask_decoder_model` names).
    max_phrase_tokens: length of SAM3's prompt (at most 32 tokens).
    im_end_token_id: `<|im_end|>`, where generation stops.
    score_threshold: default threshold of kept instances (0.3 in the release's inference).

    From-scratch aids (defaults = `RELEASE_BEHAVIOUR`; each is NOT in the release):
    phrase_prompt: which tokens become SAM3's prompt. "ref_markers" (the release's inference):
        `[ref_start] + phrase + [ref_end]`; "bare": the phrase tokens only (the release's training
        rule, which this project's own models were trained and run with).
    presence_token: keep SAM3's presence token at the head of the DETR decoder's query sequence
        (stock SAM3; the release removed it). Models trained here before this option existed have it.
    presence_head: SAM3's presence head on that token -> one logit per phrase ("is it in the image
        at all?"), multiplying the "query"/"query_x_mask" scores, as SAM3 does. Needs presence_token.
    region_head: build the region head (region_head.py): each query's mask judged against its
        phrase on a full-resolution crop of the image.
    instance_score: "query" (the release): sigmoid of the score head. "query_x_mask": times the
        mean mask probability over the instance's own mask (Mask2Former's inference). "semantic_x_mask":
        SAM3's semantic map averaged over the instance's mask, times the mask's mean probability.
        "semantic_x_mask_x_region": that times the region head's sigmoid (needs region_head).
    mask_nms_overlap: None (the release) or a share in (0, 1) for greedy containment NMS per phrase.
    inference_layout: positions and attention masks at inference (inference_layout.py). "release":
        as the release's inference runs (1-D positions with the query block shifted by one, the
        prompt prefilled bidirectionally, the queries also seeing `<|mask_end|>`), which its
        published numbers were measured with. "trained": as its training forward (M-RoPE, causal
        prompt, hybrid query block), which the weights were trained with; models trained here
        record it. A config.json without the field is the release's; one written by this project
        before the field existed is "trained" (model_directory.translate_legacy).
        The training forward (`model.train()`) always uses "trained", as the release's does.
    """

    model_type = "qwen3_vl"

    # --- the release's fields
    max_seg_nums: int = 10
    out_dim: int = 256
    mask_decoder_model: str | None = None
    mm_mask_decoder: str | None = None
    seg_encoder: str = "sam3"
    seg_decoder: str = "sam3"
    seg_token_index: int | None = None
    seg_start_token_index: int | None = None
    seg_end_token_index: int | None = None
    ref_start_token_index: int | None = None
    ref_end_token_index: int | None = None
    region_token_index: int | None = None
    dice_loss_weight: float = 0.5
    bce_loss_weight: float = 2.0
    cls_loss_weight: float = 1.0
    loss_sample_points: bool = True
    # --- this project's fields
    sam3_config: dict | Sam3Config | None = None
    max_phrase_tokens: int = 32
    im_end_token_id: int | None = None
    score_threshold: float = 0.3
    # --- from-scratch aids; defaults are RELEASE_BEHAVIOUR (checked by a test)
    phrase_prompt: str = "ref_markers"
    presence_token: bool = False
    presence_head: bool = False
    region_head: bool = False
    instance_score: str = "query"
    mask_nms_overlap: float | None = None
    inference_layout: str = "release"

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if self.sam3_config is None:
            self.sam3_config = published_sam3_config()
        elif isinstance(self.sam3_config, dict):
            self.sam3_config = Sam3Config(**self.sam3_config)
        if self.instance_score not in INSTANCE_SCORES:
            raise ValueError(f"instance_score must be one of {', '.join(INSTANCE_SCORES)}, got {self.instance_score!r}")
        if self.phrase_prompt not in PHRASE_PROMPTS:
            raise ValueError(f"phrase_prompt must be one of {', '.join(PHRASE_PROMPTS)}, got {self.phrase_prompt!r}")
        if self.inference_layout not in INFERENCE_LAYOUTS:
            raise ValueError(
                f"inference_layout must be one of {', '.join(INFERENCE_LAYOUTS)}, got {self.inference_layout!r}"
            )
        if self.instance_score == "semantic_x_mask_x_region" and not self.region_head:
            raise ValueError("instance_score semantic_x_mask_x_region needs region_head: true")
        if self.presence_head and not self.presence_token:
            raise ValueError("presence_head needs presence_token: true (the head reads the presence token)")
        if self.mask_nms_overlap is not None and not (
            isinstance(self.mask_nms_overlap, (int, float)) and not isinstance(self.mask_nms_overlap, bool)
            and 0.0 < self.mask_nms_overlap < 1.0
        ):
            raise ValueError(f"mask_nms_overlap must be null or a number in (0, 1), got {self.mask_nms_overlap!r}")
        # SAM3's decoder holds exactly one learned reference box per instance query.
        self.sam3_config.detr_decoder_config.num_queries = self.max_seg_nums
        if self.sam3_config.detr_decoder_config.hidden_size != self.out_dim:
            raise ValueError(
                f"out_dim ({self.out_dim}) must equal SAM3's DETR width "
                f"({self.sam3_config.detr_decoder_config.hidden_size})"
            )

    @classmethod
    def from_pretrained(cls, model_dir, sam3_config=None, **overrides) -> "InstructSamConfig":  # type: ignore[override]
        """The checked config of a local model directory, SAM3's config resolved (`load_model_config`)."""
        return load_model_config(model_dir, sam3_config, **overrides)[0]

    def to_dict(self) -> dict:
        """config.json as the release writes it: no SAM3 config inside, the release's class name."""
        output = super().to_dict()
        output.pop("sam3_config", None)
        output["architectures"] = [RELEASE_ARCHITECTURE]
        return output

    @property
    def sam3_image_size(self) -> int:
        return int(self.sam3_config.vision_config.backbone_config.image_size)

    @property
    def text_hidden_size(self) -> int:
        return int(self.text_config.hidden_size)

    def release_behaviour(self) -> bool:
        """True when every option of `RELEASE_BEHAVIOUR` has the release's value."""
        return all(getattr(self, name) == value for name, value in RELEASE_BEHAVIOUR.items())


def load_model_config(
    model_dir: str | Path, sam3_config_dir: str | Path | None = None, **overrides
) -> tuple[InstructSamConfig, str]:
    """(validated `InstructSamConfig`, where SAM3's architecture came from) of a model directory.

    Nothing is built or fetched. `overrides` set config fields (e.g. the attention implementation).
    """
    model_dir = Path(model_dir)
    where = str(model_dir / "config.json")
    raw, legacy_sam3 = translate_legacy(read_json_object(model_dir / "config.json"))
    check_model_sizes(raw, where)
    if sam3_config_dir is None and legacy_sam3 is not None:
        check_sam3_sizes(legacy_sam3, where)
        sam3, source = Sam3Config(**legacy_sam3), f"the sam3_config inside {where} (earlier layout)"
    else:
        sam3, source = resolve_sam3_config(model_dir, raw.get("mask_decoder_model"), sam3_config_dir)
    fields = {k: v for k, v in raw.items() if k not in ("model_type", "transformers_version", "sam3_config")}
    fields.update(overrides)
    try:
        config = InstructSamConfig(**fields, sam3_config=sam3, name_or_path=str(model_dir))
    except (TypeError, ValueError, KeyError) as error:
        hint = f" (SAM3 from {source}; --sam3-config DIR names another)" if "SAM3" in str(error) else ""
        raise CheckpointError(f"{where}: {error}{hint}") from None
    return config, source


__all__ = ["InstructSamConfig", "load_model_config", "RELEASE_BEHAVIOUR", "INSTANCE_SCORES", "PHRASE_PROMPTS",
           "INFERENCE_LAYOUTS"]
