"""InstructSamConfig: a Qwen3-VL config plus the SAM3 detector config and the query settings.

It extends `Qwen3VLConfig` (rather than wrapping it) because the VLM half of the model *is* a
Qwen3-VL model whose config fields (image token ids, vision/text sub-configs) are read directly;
the released checkpoint's config.json is a Qwen3-VL config with extra fields, so it loads as is.
"""
from __future__ import annotations

from transformers import AutoConfig, Qwen3VLConfig, Sam3Config

INSTANCE_SCORES = ("query", "query_x_mask", "semantic_x_mask", "semantic_x_mask_x_region")


class InstructSamConfig(Qwen3VLConfig):
    """Configuration of `InstructSamForSegmentation`.

    num_queries_per_phrase: size of the instance-query bank (10 in the paper); also SAM3's
        `num_queries`, since the projected bank replaces SAM3's learned object queries.
    projector_dim: SAM3's DETR width (256); both projector MLPs end there.
    max_phrase_tokens: phrase tokens fed to SAM3 as prompt tokens (at most 32).
    *_token_id: ids of the special tokens of the answer layout (filled from the tokenizer).
    sam3_image_size: side of the square image SAM3 sees (1008 for the real model).
    instance_score: how an instance's score is formed from the detector's outputs. "query" (the
        release): sigmoid of the score head. "query_x_mask": that times the mean mask probability
        over the instance's own mask (Mask2Former's instance inference), so an empty or unsure
        mask ranks low. "semantic_x_mask": the mean probability of SAM3's semantic map (where the
        phrase is) over the instance's own mask, times the mean mask probability there - the
        score head and the presence head are not used; for from-scratch models whose semantic
        head (trained densely) knows the phrase better than the one-to-many score head.
        "semantic_x_mask_x_region": that times the sigmoid of the region head (needs
        `region_head`). The released model uses "query".
    presence_head: keep SAM3's presence head (the decoder's presence token -> MLP -> one logit
        per phrase: "is it in the image at all?") and multiply every instance score by its
        sigmoid, as SAM3 does. The release drops it (False); the from-scratch recipe keeps it.
    region_head: build the region head (region_head.py; not in the release): every query's mask
        is judged against its phrase on a full-resolution crop of the image, for from-scratch
        detectors whose coarse patch grid cannot resolve small objects' shapes.
    mask_nms_overlap: None (the release: no NMS) or a share in (0, 1): a query gets score 0 when
        more than this share of its binarised mask lies inside the mask of a better-scoring kept
        query of the same phrase (greedy NMS on containment, which is never below the IoU, so
        duplicates and fragments both go). For models whose score head is trained one-to-many
        (`score_target: mask_iou`), where several queries of one instance score high.
    """

    model_type = "instructsam"
    sub_configs_defaults = {**Qwen3VLConfig.sub_configs_defaults, "sam3_config": Sam3Config}

    sam3_config: dict | Sam3Config | None = None
    num_queries_per_phrase: int = 10
    projector_dim: int = 256
    max_phrase_tokens: int = 32
    seg_token_id: int | None = None
    mask_start_token_id: int | None = None
    mask_end_token_id: int | None = None
    ref_start_token_id: int | None = None
    ref_end_token_id: int | None = None
    im_end_token_id: int | None = None
    score_threshold: float = 0.3
    instance_score: str = "query"
    presence_head: bool = False
    region_head: bool = False
    mask_nms_overlap: float | None = None

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if self.instance_score not in INSTANCE_SCORES:
            raise ValueError(f"instance_score must be one of {', '.join(INSTANCE_SCORES)}, got {self.instance_score!r}")
        if self.instance_score == "semantic_x_mask_x_region" and not self.region_head:
            raise ValueError("instance_score semantic_x_mask_x_region needs region_head: true")
        if self.mask_nms_overlap is not None and not (
            isinstance(self.mask_nms_overlap, (int, float)) and not isinstance(self.mask_nms_overlap, bool)
            and 0.0 < self.mask_nms_overlap < 1.0
        ):
            raise ValueError(f"mask_nms_overlap must be null or a number in (0, 1), got {self.mask_nms_overlap!r}")
        # SAM3's decoder holds exactly one learned reference box per instance query.
        decoder = self.sam3_config.detr_decoder_config
        decoder.num_queries = self.num_queries_per_phrase
        if self.sam3_config.detr_decoder_config.hidden_size != self.projector_dim:
            raise ValueError(
                f"projector_dim ({self.projector_dim}) must equal SAM3's DETR width "
                f"({self.sam3_config.detr_decoder_config.hidden_size})"
            )

    @property
    def sam3_image_size(self) -> int:
        return int(self.sam3_config.vision_config.backbone_config.image_size)

    @property
    def text_hidden_size(self) -> int:
        return int(self.text_config.hidden_size)

    def special_token_ids(self) -> dict[str, int | None]:
        return {
            "seg": self.seg_token_id,
            "mask_start": self.mask_start_token_id,
            "mask_end": self.mask_end_token_id,
            "ref_start": self.ref_start_token_id,
            "ref_end": self.ref_end_token_id,
            "im_end": self.im_end_token_id,
        }


# Let AutoConfig/AutoTokenizer read an InstructSAM model directory's config.json (they consult it
# to choose a tokenizer class); without this they fall back to a base config and warn.
AutoConfig.register(InstructSamConfig.model_type, InstructSamConfig, exist_ok=True)
