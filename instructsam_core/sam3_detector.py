"""SAM3's detector driven by instance queries from the VLM instead of its own learned queries.

Built from the stock transformers SAM3 modules so that released SAM3 weights load under their
usual keys (`vision_encoder.*`, `detr_encoder.*`, `detr_decoder.*`, `mask_decoder.*`,
`dot_product_scoring.*`). What InstructSAM does not use is not built: the CLIP text encoder and
its projection (the phrase encoder MLP replaces them), the geometry encoder (no box/point
prompts) and, as in the release, the presence head (score = sigmoid(pred_logits)). The presence
*token* stays in the decoder's query sequence, because every stock decoder layer expects it at
position 0. `presence_head=True` keeps SAM3's head on that token (a from-scratch option: score =
sigmoid(pred_logits) * sigmoid(presence logit), as in SAM3 itself).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import Sam3Config
from transformers.masking_utils import create_bidirectional_mask
from transformers.models.sam3.modeling_sam3 import (
    Sam3DetrDecoder,
    Sam3DetrEncoder,
    Sam3DotProductScoring,
    Sam3MaskDecoder,
    Sam3PreTrainedModel,
    Sam3VisionEncoderOutput,
    Sam3VisionModel,
    box_cxcywh_to_xyxy,
    inverse_sigmoid,
)

# Keys of a full Sam3Model checkpoint that this detector leaves out on purpose.
UNUSED_SAM3_KEY_PATTERNS = (
    r"text_encoder\.",
    r"text_projection\.",
    r"geometry_encoder\.",
    r"detr_decoder\.presence_(head|layer_norm)\.",
)


class QueryInputDetrDecoder(Sam3DetrDecoder):
    """SAM3's DETR decoder with the object queries passed in.

    The stock decoder reads `query_embed.weight` inside `forward` and has no argument for external
    queries. Here the caller's queries replace `query_embed`, while the learned reference boxes
    (`reference_points`, one per query) and every layer keep their stock names and shapes.
    `query_embed` is kept (unused) so that SAM3 checkpoints load without key surgery. The
    presence token still leads the sequence (the stock layers expect it); its head is built only
    with `presence_head=True`.
    """

    def __init__(self, config, presence_head: bool = False):
        super().__init__(config)
        if not presence_head:
            del self.presence_head, self.presence_layer_norm

    def forward(  # type: ignore[override]
        self,
        query_embeds: torch.Tensor,
        vision_features: torch.Tensor,
        text_features: torch.Tensor,
        vision_pos_encoding: torch.Tensor,
        text_mask: torch.Tensor | None = None,
        spatial_shapes: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Run all layers; return (final normed query states, final refined boxes, presence
        logits [P] or None without the head).

        Boxes are (cx, cy, w, h) in [0, 1]. Only the last layer is returned: InstructSAM trains
        without auxiliary layer losses.
        """
        batch_size = query_embeds.shape[0]
        presence = self.presence_token.weight.to(query_embeds.dtype).unsqueeze(0).expand(batch_size, -1, -1)
        hidden_states = torch.cat([presence, query_embeds], dim=1)
        reference_boxes = self.reference_points.weight.unsqueeze(0).expand(batch_size, -1, -1).sigmoid()
        text_cross_attn_mask = None
        if text_mask is not None:
            text_cross_attn_mask = create_bidirectional_mask(
                config=self.config,
                inputs_embeds=hidden_states,
                attention_mask=text_mask,
                encoder_hidden_states=text_features,
            )
        normed = query_embeds
        refined_boxes = reference_boxes
        for layer in self.layers:
            query_pos = self.ref_point_head(self.position_encoding.encode_boxes(reference_boxes))
            vision_cross_attn_mask = None
            if spatial_shapes is not None and spatial_shapes.shape[0] == 1:
                # Box relative-position bias: each query attends near its current box.
                spatial_shape = (spatial_shapes[0, 0], spatial_shapes[0, 1])
                rpb = self._get_rpb_matrix(reference_boxes, spatial_shape)
                # The presence token (row 0) attends to every image location equally.
                vision_cross_attn_mask = F.pad(rpb, (0, 0, 1, 0), mode="constant", value=0)
            hidden_states = layer(
                hidden_states,
                query_pos=query_pos,
                text_features=text_features,
                vision_features=vision_features,
                vision_pos_encoding=vision_pos_encoding,
                text_cross_attn_mask=text_cross_attn_mask,
                vision_cross_attn_mask=vision_cross_attn_mask,
            )
            normed = self.output_layer_norm(hidden_states[:, 1:])
            # Iterative box refinement in logit space; the next layer starts from a detached box.
            refined_boxes = (self.box_head(normed) + inverse_sigmoid(reference_boxes)).sigmoid()
            reference_boxes = refined_boxes.detach()
        presence = None
        if hasattr(self, "presence_head"):
            presence = self.presence_head(self.presence_layer_norm(hidden_states[:, 0])).squeeze(-1)
            # SAM3 clamps the presence logit the same way.
            presence = presence.clamp(-self.clamp_presence_logit_max_val, self.clamp_presence_logit_max_val)
        return normed, refined_boxes, presence


@dataclass
class DetectorOutput:
    """Per phrase P and query Q: mask logits [P, Q, h, w], score logits [P, Q], boxes xyxy [P, Q, 4],
    and SAM3's semantic-segmentation logits [P, h, w] (where the phrase matches, all instances
    together; inference does not use them, a from-scratch training loss may); presence logits [P]
    ("is the phrase in the image at all") only when the presence head is built; region logits [P, Q]
    are filled by InstructSAM's region head (region_head.py) when the model has one."""

    pred_masks: torch.Tensor
    pred_logits: torch.Tensor
    pred_boxes: torch.Tensor
    semantic_logits: torch.Tensor | None = None
    presence_logits: torch.Tensor | None = None
    region_logits: torch.Tensor | None = None


class Sam3QueryDetector(Sam3PreTrainedModel):
    """The parts of `Sam3Model` that turn (image, prompt tokens, queries) into instance masks."""

    def __init__(self, config: Sam3Config, presence_head: bool = False):
        super().__init__(config)
        for sub in ("detr_encoder_config", "detr_decoder_config", "mask_decoder_config"):
            getattr(config, sub)._attn_implementation = config._attn_implementation
        self.vision_encoder = Sam3VisionModel(config.vision_config)
        self.detr_encoder = Sam3DetrEncoder(config.detr_encoder_config)
        self.detr_decoder = QueryInputDetrDecoder(config.detr_decoder_config, presence_head)
        self.mask_decoder = Sam3MaskDecoder(config.mask_decoder_config)
        self.dot_product_scoring = Sam3DotProductScoring(config)
        self.post_init()

    def encode_images(self, pixel_values: torch.Tensor) -> Sam3VisionEncoderOutput:
        """Image features, computed once per image and shared by all of its phrases."""
        return self.vision_encoder(pixel_values.to(self.dtype))

    def forward(
        self,
        image_features: Sam3VisionEncoderOutput,
        image_index: torch.Tensor,
        prompt_features: torch.Tensor,
        prompt_mask: torch.Tensor,
        query_embeds: torch.Tensor,
    ) -> DetectorOutput:
        """Decode every phrase at once (batch = phrases).

        image_index [P]: which encoded image each phrase belongs to. prompt_features [P, T, D] and
        prompt_mask [P, T] (True = real token) are the phrase tokens; query_embeds [P, Q, D].
        """
        # SAM3 uses the first three FPN levels; the last (lowest-resolution) one feeds the DETR.
        fpn = [level.index_select(0, image_index) for level in image_features.fpn_hidden_states[:-1]]
        fpn_pos = [level.index_select(0, image_index) for level in image_features.fpn_position_encoding[:-1]]
        prompt_mask = prompt_mask.bool()
        encoded = self.detr_encoder(
            vision_features=[fpn[-1]],
            text_features=prompt_features,
            vision_pos_embeds=[fpn_pos[-1]],
            text_mask=prompt_mask,
        )
        queries, boxes, presence = self.detr_decoder(
            query_embeds=query_embeds,
            vision_features=encoded.last_hidden_state,
            text_features=encoded.text_features,
            vision_pos_encoding=encoded.pos_embeds_flattened,
            text_mask=prompt_mask,
            spatial_shapes=encoded.spatial_shapes,
        )
        logits = self.dot_product_scoring(
            decoder_hidden_states=queries.unsqueeze(0),
            text_features=encoded.text_features,
            text_mask=prompt_mask,
        )[0, ..., 0]
        decoded = self.mask_decoder(
            decoder_queries=queries,
            backbone_features=fpn,
            encoder_hidden_states=encoded.last_hidden_state,
            prompt_features=prompt_features,
            prompt_mask=prompt_mask,
        )
        return DetectorOutput(pred_masks=decoded.pred_masks, pred_logits=logits, pred_boxes=box_cxcywh_to_xyxy(boxes),
                              semantic_logits=decoded.semantic_seg[:, 0], presence_logits=presence)


class GroundingModel(nn.Module):
    """Holder that reproduces the release's key prefix `grounding_model.model.*`."""

    def __init__(self, config: Sam3Config, presence_head: bool = False):
        super().__init__()
        self.model = Sam3QueryDetector(config, presence_head)


def projector_mlp(hidden_size: int, out_size: int) -> nn.Sequential:
    """Linear H->H, ReLU, Linear H->out: the shape of both InstructSAM projectors."""
    return nn.Sequential(nn.Linear(hidden_size, hidden_size), nn.ReLU(), nn.Linear(hidden_size, out_size))


__all__ = ["QueryInputDetrDecoder", "Sam3QueryDetector", "GroundingModel", "DetectorOutput", "projector_mlp"]
