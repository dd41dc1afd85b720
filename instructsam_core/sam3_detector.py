"""SAM3's detector driven by instance queries from the VLM instead of its own learned queries.

Built from the stock transformers SAM3 modules so that released weights load under their usual
keys (`vision_encoder.*`, `detr_encoder.*`, `detr_decoder.*`, `mask_decoder.*`,
`dot_product_scoring.*`). What InstructSAM does not use is not built: the CLIP text encoder and
its projection (the phrase projector replaces them) and the geometry encoder (no box/point
prompts). As in the release, the DETR decoder has no presence token and no presence head: its
query sequence is just the instance queries, and score = sigmoid(pred_logits).

`presence_token=True` (a from-scratch option, not the release) keeps stock SAM3's presence token
at the head of the query sequence, and `presence_head=True` its head on that token (score times
sigmoid(presence logit), as in SAM3 itself); this project's earlier models were trained with them.
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
    Sam3DetrDecoderLayer,
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
)


class QueryInputDetrDecoder(Sam3DetrDecoder):
    """SAM3's DETR decoder with the object queries passed in, and without the presence token.

    The stock decoder reads `query_embed.weight` inside `forward`, always prepends its presence
    token and its layers pad the query positions for it. Here the caller's queries replace
    `query_embed`, and the sequence is just those queries, as in the release; the learned
    reference boxes (`reference_points`, one per query) and every layer keep their stock names
    and shapes. `query_embed` is kept (unused) because the release's checkpoint has it.
    `presence_token` / `presence_head` restore stock SAM3's token and head (from-scratch options).
    """

    def __init__(self, config, presence_token: bool = False, presence_head: bool = False):
        super().__init__(config)
        if not presence_head:
            del self.presence_head, self.presence_layer_norm
        if not presence_token:
            del self.presence_token

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
        lead = 1 if hasattr(self, "presence_token") else 0
        hidden_states = query_embeds
        if lead:
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
                vision_cross_attn_mask = self._get_rpb_matrix(reference_boxes, spatial_shape)
            if lead:
                # The presence token has no position and attends to every image location equally.
                query_pos = F.pad(query_pos, (0, 0, 1, 0), mode="constant", value=0)
                if vision_cross_attn_mask is not None:
                    vision_cross_attn_mask = F.pad(vision_cross_attn_mask, (0, 0, 1, 0), mode="constant", value=0)
            hidden_states = _decoder_layer(
                layer, hidden_states, query_pos, text_features, vision_features, vision_pos_encoding,
                text_cross_attn_mask, vision_cross_attn_mask,
            )
            normed = self.output_layer_norm(hidden_states[:, lead:])
            # Iterative box refinement in logit space; the next layer starts from a detached box.
            refined_boxes = (self.box_head(normed) + inverse_sigmoid(reference_boxes)).sigmoid()
            reference_boxes = refined_boxes.detach()
        presence = None
        if hasattr(self, "presence_head"):
            presence = self.presence_head(self.presence_layer_norm(hidden_states[:, 0])).squeeze(-1)
            # SAM3 clamps the presence logit the same way.
            presence = presence.clamp(-self.clamp_presence_logit_max_val, self.clamp_presence_logit_max_val)
        return normed, refined_boxes, presence


def _decoder_layer(
    layer: Sam3DetrDecoderLayer,
    hidden_states: torch.Tensor,
    query_pos: torch.Tensor,
    text_features: torch.Tensor,
    vision_features: torch.Tensor,
    vision_pos_encoding: torch.Tensor,
    text_cross_attn_mask: torch.Tensor | None,
    vision_cross_attn_mask: torch.Tensor | None,
) -> torch.Tensor:
    """One stock decoder layer's computation, on a query sequence of any make-up.

    The stock `Sam3DetrDecoderLayer.forward` pads `query_pos` for a presence token it assumes at
    position 0; the release's layer does not. This runs the same sub-modules (self-attention, text
    cross-attention, vision cross-attention with the box bias, MLP; post-norm residuals) with
    `query_pos` exactly as given, so one code path serves sequences with and without the token.
    """
    def residual(states, update, dropout, norm):
        return norm(states + dropout(update))

    with_pos = hidden_states + query_pos
    update, _ = layer.self_attn(query=with_pos, key=with_pos, value=hidden_states, attention_mask=None)
    hidden_states = residual(hidden_states, update, layer.self_attn_dropout, layer.self_attn_layer_norm)
    update, _ = layer.text_cross_attn(query=hidden_states + query_pos, key=text_features, value=text_features,
                                      attention_mask=text_cross_attn_mask)
    hidden_states = residual(hidden_states, update, layer.text_cross_attn_dropout, layer.text_cross_attn_layer_norm)
    update, _ = layer.vision_cross_attn(query=hidden_states + query_pos, key=vision_features + vision_pos_encoding,
                                        value=vision_features, attention_mask=vision_cross_attn_mask)
    hidden_states = residual(hidden_states, update, layer.vision_cross_attn_dropout,
                             layer.vision_cross_attn_layer_norm)
    return residual(hidden_states, layer.mlp(hidden_states), layer.mlp_dropout, layer.mlp_layer_norm)


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

    def __init__(self, config: Sam3Config, presence_token: bool = False, presence_head: bool = False):
        super().__init__(config)
        for sub in ("detr_encoder_config", "detr_decoder_config", "mask_decoder_config"):
            getattr(config, sub)._attn_implementation = config._attn_implementation
        self.vision_encoder = Sam3VisionModel(config.vision_config)
        self.detr_encoder = Sam3DetrEncoder(config.detr_encoder_config)
        self.detr_decoder = QueryInputDetrDecoder(config.detr_decoder_config, presence_token, presence_head)
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

    def __init__(self, config: Sam3Config, presence_token: bool = False, presence_head: bool = False):
        super().__init__()
        self.model = Sam3QueryDetector(config, presence_token, presence_head)


def projector_mlp(hidden_size: int, out_size: int) -> nn.Sequential:
    """Linear H->H, ReLU, Linear H->out: the shape of both InstructSAM projectors."""
    return nn.Sequential(nn.Linear(hidden_size, hidden_size), nn.ReLU(), nn.Linear(hidden_size, out_size))


__all__ = ["QueryInputDetrDecoder", "Sam3QueryDetector", "GroundingModel", "DetectorOutput", "projector_mlp"]
