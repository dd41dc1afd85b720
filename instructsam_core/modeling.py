"""InstructSamForSegmentation: Qwen3-VL with an instance-query bank, feeding SAM3's detector.

Data path of one forward pass (reference-design.md, "Model"):
  tokens + image -> input embeddings, with the k-th `[SEG]` of every query block replaced by
  bank row k -> Qwen3-VL language model with the positions and attention mask of the config's
  inference layout (inference_layout.py; training: the trained layout) -> final-layer states
  at the `[SEG]` positions [P, Q, H] -> query projector -> SAM3 object queries; the phrase's
  input embeddings -> phrase projector -> SAM3 prompt tokens; SAM3 image features (once per
  image) -> DETR encoder/decoder, score head, mask head -> masks [P, Q, h, w] and scores [P, Q].
  With `config.region_head` (a from-scratch option), every mask is also judged against its
  phrase on a crop of the SAM3 input image (region_head.py) -> region logits [P, Q]; in eval
  mode each separate region of a mask is judged alone and the mask keeps the best one.

Module names reproduce the authors' released checkpoint layout (`model.mask_queries`,
`model.mask_hidden_fcs.0.*`, `model.text_hidden_fcs.0.*`, `model.grounding_model.model.*`,
`model.visual.*`, `model.language_model.*`, `lm_head.*`), so it loads without conversion.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import initialization as init
from transformers.cache_utils import Cache
from transformers.modeling_outputs import ModelOutput
from transformers.models.qwen3_vl.modeling_qwen3_vl import Qwen3VLModel, Qwen3VLPreTrainedModel

from instructsam_core.attention import seg_runs
from instructsam_core.configuration import InstructSamConfig, load_model_config
from instructsam_core.errors import CheckpointError
from instructsam_core.inference_layout import TRAINED, sequence_inputs
from instructsam_core.model_directory import check_weight_files
from instructsam_core.region_head import RegionScoreHead
from instructsam_core.sam3_config import SAM3_SUBDIR, write_sam3_config_dir
from instructsam_core.sam3_detector import UNUSED_SAM3_KEY_PATTERNS, DetectorOutput, GroundingModel, projector_mlp

GROUNDING_PREFIX = r"model\.grounding_model\.model\."
# Checkpoint keys that may be present or absent without changing the model (see sam3_detector).
IGNORED_CHECKPOINT_KEYS = tuple(GROUNDING_PREFIX + pattern for pattern in UNUSED_SAM3_KEY_PATTERNS)
# Short names of the answer-layout tokens -> the release's config fields holding their ids.
_TOKEN_FIELDS = {
    "seg": "seg_token_index",
    "mask_start": "seg_start_token_index",
    "mask_end": "seg_end_token_index",
    "ref_start": "ref_start_token_index",
    "ref_end": "ref_end_token_index",
    "im_end": "im_end_token_id",
}


@dataclass
class InstructSamOutput(ModelOutput):
    """Outputs for a batch with P query blocks in total (row-major order over the batch).

    logits [B, L, V] (only when asked for); query_states [P, Q, H]; pred_masks [P, Q, h, w] mask
    logits on SAM3's square grid; pred_logits [P, Q] score logits; pred_boxes [P, Q, 4] xyxy in
    [0, 1]; semantic_logits [P, h, w] SAM3's semantic head (training only); presence_logits [P]
    (only with `config.presence_head`); region_logits [P, Q] (only with `config.region_head`);
    phrase_row [P] batch
    row of each block; phrase_ids/phrase_mask [P, T] the phrase tokens used as SAM3 prompts.
    """

    logits: torch.Tensor | None = None
    query_states: torch.Tensor | None = None
    pred_masks: torch.Tensor | None = None
    pred_logits: torch.Tensor | None = None
    pred_boxes: torch.Tensor | None = None
    semantic_logits: torch.Tensor | None = None
    presence_logits: torch.Tensor | None = None
    region_logits: torch.Tensor | None = None
    phrase_row: torch.Tensor | None = None
    phrase_ids: torch.Tensor | None = None
    phrase_mask: torch.Tensor | None = None
    cache: Cache | None = None


class InstructSamBackbone(Qwen3VLModel):
    """Qwen3-VL (`visual`, `language_model`) plus the query bank, both projectors and SAM3."""

    config: InstructSamConfig

    def __init__(self, config: InstructSamConfig):
        super().__init__(config)
        hidden = config.text_config.hidden_size
        self.mask_queries = nn.Parameter(torch.zeros(config.max_seg_nums, hidden))
        # ModuleList of one: the release's key layout is `mask_hidden_fcs.0.{0,2}`.
        self.mask_hidden_fcs = nn.ModuleList([projector_mlp(hidden, config.out_dim)])
        self.text_hidden_fcs = nn.ModuleList([projector_mlp(hidden, config.out_dim)])
        self.grounding_model = GroundingModel(config.sam3_config, config.presence_token, config.presence_head)
        if config.region_head:
            self.region_head = RegionScoreHead(hidden)
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if module is self:
            init.zeros_(self.mask_queries)  # the paper zero-initialises the bank
        if isinstance(module, RegionScoreHead):
            module.reset_parameters()


class InstructSamForSegmentation(Qwen3VLPreTrainedModel):
    """The whole InstructSAM model; see the module docstring for the data path."""

    config_class = InstructSamConfig
    config: InstructSamConfig
    base_model_prefix = "model"
    _tied_weights_keys = {"lm_head.weight": "model.language_model.embed_tokens.weight"}
    _keys_to_ignore_on_load_unexpected = list(IGNORED_CHECKPOINT_KEYS)
    _no_split_modules = ["Qwen3VLTextDecoderLayer", "Qwen3VLVisionBlock"]

    def __init__(self, config: InstructSamConfig):
        super().__init__(config)
        self.model = InstructSamBackbone(config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        self.post_init()

    # ----------------------------------------------------------------- loading
    @classmethod
    def from_pretrained(  # type: ignore[override]
        cls,
        model_dir: str | Path,
        *args,
        strict: bool = True,
        sam3_config: str | Path | None = None,
        **kwargs,
    ):
        """Load a local model directory as the authors' release writes it (nothing is downloaded).

        config.json is checked before anything is built (model_directory.py); SAM3's architecture
        comes from `sam3_config` (a directory), else from `mask_decoder_model`, else the copy a
        directory written here carries, else the published sizes (sam3_config.py). Weights are
        safetensors only. Unlike the transformers default, which only warns, missing, unexpected
        or mis-shaped keys are a `CheckpointError` that lists them.
        """
        model_dir = Path(model_dir)
        check_weight_files(model_dir)
        config, sam3_source = load_model_config(model_dir, sam3_config)
        kwargs.setdefault("attn_implementation", "sdpa")
        try:
            model, info = super().from_pretrained(
                model_dir, *args, config=config, local_files_only=True, use_safetensors=True,
                output_loading_info=True, ignore_mismatched_sizes=True, **kwargs,
            )
        except (OSError, ValueError, RuntimeError) as error:
            raise CheckpointError(f"cannot load the weights in {model_dir}: {str(error).splitlines()[0]}") from None
        missing = sorted(info.get("missing_keys", []))
        unexpected = sorted(info.get("unexpected_keys", []))
        mismatched = sorted(str(item) for item in info.get("mismatched_keys", []))
        if strict and (missing or unexpected or mismatched):
            raise CheckpointError(_key_report(model_dir, missing, unexpected, mismatched, sam3_source))
        return model

    def save_pretrained(self, save_directory: str | Path, *args, **kwargs) -> None:  # type: ignore[override]
        """Write what the release reads: its config.json fields and key layout, plus the SAM3 config
        as its own directory (`sam3/`), named by `mask_decoder_model` with an absolute path because
        the authors' code opens that path as given. Loading here falls back to `sam3/` when the
        recorded path does not exist (another machine)."""
        directory = Path(save_directory)
        sam3_dir = write_sam3_config_dir(self.config.sam3_config, directory / SAM3_SUBDIR).resolve()
        self.config.mask_decoder_model = self.config.mm_mask_decoder = str(sam3_dir)
        super().save_pretrained(directory, *args, **kwargs)

    # ------------------------------------------------------------ token layout
    def _token_id(self, name: str) -> int:
        value = getattr(self.config, _TOKEN_FIELDS[name])
        if value is None:
            raise CheckpointError(f"config has no {_TOKEN_FIELDS[name]}; load the model through InstructSamProcessor")
        return int(value)

    def embed_tokens(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        image_grid_thw: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None, list[torch.Tensor] | None]:
        """Input embeddings with image features and instance queries put in place.

        Returns (inputs_embeds, visual_pos_masks, deepstack_visual_embeds); the last two are None
        without an image.
        """
        backbone = self.model
        embeds = backbone.get_input_embeddings()(input_ids)
        visual_mask, deepstack = None, None
        if pixel_values is not None:
            vision = backbone.get_image_features(pixel_values, image_grid_thw, return_dict=True)
            image_embeds = torch.cat(vision.pooler_output, dim=0).to(embeds.dtype)
            visual_mask = input_ids == self.config.image_token_id
            if int(visual_mask.sum()) != image_embeds.shape[0]:
                raise ValueError(
                    f"{int(visual_mask.sum())} image tokens in the text but {image_embeds.shape[0]} image features"
                )
            embeds = embeds.masked_scatter(visual_mask.unsqueeze(-1), image_embeds)
            deepstack = [torch.cat(level, dim=0) for level in vision.deepstack_features]
        is_seg = input_ids == self._token_id("seg")
        if bool(is_seg.any()):
            _, offset = seg_runs(is_seg)
            if int(offset.max()) >= self.config.max_seg_nums:
                raise ValueError(
                    f"a [SEG] run is longer than the {self.config.max_seg_nums} instance queries"
                )
            queries = backbone.mask_queries.to(embeds.dtype)[offset]
            embeds = torch.where(is_seg.unsqueeze(-1), queries, embeds)
        return embeds, visual_mask, deepstack

    def run_language_model(
        self,
        inputs_embeds: torch.Tensor,
        position_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        cache: Cache | None = None,
        visual_pos_masks: torch.Tensor | None = None,
        deepstack_visual_embeds: list[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Final-layer (normed) hidden states for the given positions [3, B, L] and boolean mask
        [B, 1, L, past + L] (inference_layout.py builds both)."""
        out = self.model.language_model(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            use_cache=cache is not None,
            visual_pos_masks=visual_pos_masks,
            deepstack_visual_embeds=deepstack_visual_embeds,
        )
        return out.last_hidden_state

    def phrase_tokens(self, input_ids: torch.Tensor) -> tuple[list[list[int]], list[int]]:
        """For every query block (row-major), the phrase tokens between the ref markers before it
        (markers excluded), and the batch row of the block."""
        seg, ref_start, ref_end = self._token_id("seg"), self._token_id("ref_start"), self._token_id("ref_end")
        phrases: list[list[int]] = []
        rows: list[int] = []
        for row, ids in enumerate(input_ids.tolist()):
            for position, token in enumerate(ids):
                if token != seg or (position > 0 and ids[position - 1] == seg):
                    continue
                end = _last_index(ids, ref_end, position)
                start = _last_index(ids, ref_start, end) if end >= 0 else -1
                if start < 0 or end - start < 2:
                    raise ValueError(f"query block at row {row}, position {position} has no phrase before it")
                phrases.append(ids[start + 1 : end])
                rows.append(row)
        return phrases, rows

    def sam3_prompt(self, phrases: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """SAM3's prompt tokens [P, T] (zero-padded) and validity mask [P, T] for bare phrases.

        `config.phrase_prompt` "ref_markers" (the release's inference): `[ref_start] + phrase +
        [ref_end]`; "bare": the phrase alone. Either is cut to `max_phrase_tokens`.
        """
        if self.config.phrase_prompt == "ref_markers":
            ref_start, ref_end = self._token_id("ref_start"), self._token_id("ref_end")
            phrases = [[ref_start, *phrase, ref_end] for phrase in phrases]
        phrases = [phrase[: self.config.max_phrase_tokens] for phrase in phrases]
        device = self.lm_head.weight.device
        length = max(len(p) for p in phrases)
        ids = torch.zeros(len(phrases), length, dtype=torch.long, device=device)
        mask = torch.zeros(len(phrases), length, dtype=torch.bool, device=device)
        for i, phrase in enumerate(phrases):
            ids[i, : len(phrase)] = torch.tensor(phrase, dtype=torch.long, device=device)
            mask[i, : len(phrase)] = True
        return ids, mask

    # --------------------------------------------------------------- detection
    def detect(
        self,
        query_states: torch.Tensor,
        phrase_ids: torch.Tensor,
        phrase_mask: torch.Tensor,
        image_features,
        image_index: torch.Tensor,
        sam_pixel_values: torch.Tensor | None = None,
    ) -> DetectorOutput:
        """SAM3 decode for P phrases: projected query states become its object queries and the
        projected phrase input embeddings its prompt tokens. `sam_pixel_values` (the encoded
        images) are needed with `config.region_head` only."""
        backbone = self.model
        query_embeds = backbone.mask_hidden_fcs[0](query_states)
        phrase_embeds = backbone.get_input_embeddings()(phrase_ids)
        prompt = backbone.text_hidden_fcs[0](phrase_embeds)
        detector = backbone.grounding_model.model
        out = detector(
            image_features=image_features,
            image_index=image_index,
            prompt_features=prompt.to(detector.dtype),
            prompt_mask=phrase_mask,
            query_embeds=query_embeds.to(detector.dtype),
        )
        if hasattr(backbone, "region_head"):
            if sam_pixel_values is None:
                raise ValueError("the region head scores image crops: pass sam_pixel_values")
            images = sam_pixel_values.index_select(0, image_index)
            head = backbone.region_head
            if self.training:
                out.region_logits = head(images, out.pred_masks, phrase_embeds, phrase_mask)
            else:
                # Inference: each separate region of a mask is judged alone; the mask keeps the best.
                out.region_logits, out.pred_masks = head.judge_regions(images, out.pred_masks, phrase_embeds, phrase_mask)
        return out

    def encode_sam_images(self, sam_pixel_values: torch.Tensor):
        return self.model.grounding_model.model.encode_images(sam_pixel_values)

    def position_ids(self, input_ids, mm_token_type_ids, image_grid_thw, attention_mask) -> tuple[torch.Tensor, torch.Tensor]:
        """M-RoPE positions [3, B, L] and per-row deltas (position minus index after the prompt)."""
        if mm_token_type_ids is None:
            mm_token_type_ids = torch.zeros_like(input_ids, dtype=torch.int)
        return self.model.get_rope_index(
            input_ids, mm_token_type_ids, image_grid_thw=image_grid_thw, attention_mask=attention_mask
        )

    # ----------------------------------------------------------------- forward
    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        image_grid_thw: torch.Tensor | None = None,
        mm_token_type_ids: torch.Tensor | None = None,
        sam_pixel_values: torch.Tensor | None = None,
        compute_logits: bool = True,
        prompt_lengths: torch.Tensor | None = None,
        phrase_ids: torch.Tensor | None = None,
        phrase_mask: torch.Tensor | None = None,
        **_: object,
    ) -> InstructSamOutput:
        """One pass over complete sequences (training, and the single-forward inference path).

        Row b of the batch belongs to image b (`sam_pixel_values[b]`). Every query block in
        `input_ids` yields Q instances; `labels` are handled by the training loss, not here.
        In training mode the layout is the trained one (the release trains so); at inference the
        config's `inference_layout`, whose "release" needs `prompt_lengths` [B] (the processor's).
        `phrase_ids`/`phrase_mask` [P, T], when given, are SAM3's prompt tokens of the P blocks (the
        training collator passes the bare phrases, the release's training rule); otherwise they
        come from the ref-marked phrases before each block, by `config.phrase_prompt`.
        """
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        embeds, visual_mask, deepstack = self.embed_tokens(input_ids, pixel_values, image_grid_thw)
        layout = TRAINED if self.training else self.config.inference_layout
        positions, mask, _ = sequence_inputs(
            self, input_ids, attention_mask, image_grid_thw, mm_token_type_ids, prompt_lengths, layout
        )
        hidden = self.run_language_model(embeds, positions, mask, None, visual_mask, deepstack)
        output = InstructSamOutput()
        if compute_logits:
            output.logits = self.lm_head(hidden)
        is_seg = input_ids == self._token_id("seg")
        if not bool(is_seg.any()):
            return output
        queries = self.config.max_seg_nums
        if int(is_seg.sum()) % queries:
            raise ValueError(f"every query block must hold exactly {queries} [SEG] tokens")
        output.query_states = hidden[is_seg].reshape(-1, queries, hidden.shape[-1])
        phrases, rows = self.phrase_tokens(input_ids)
        if phrase_ids is None:
            output.phrase_ids, output.phrase_mask = self.sam3_prompt(phrases)
        elif phrase_ids.shape[0] != len(phrases) or phrase_mask is None:
            raise ValueError(f"{phrase_ids.shape[0]} phrase prompts (with a mask) for {len(phrases)} query blocks")
        else:
            output.phrase_ids, output.phrase_mask = phrase_ids.to(input_ids.device), phrase_mask.to(input_ids.device)
        output.phrase_row = torch.tensor(rows, dtype=torch.long, device=input_ids.device)
        if sam_pixel_values is not None:
            features = self.encode_sam_images(sam_pixel_values)
            detected = self.detect(
                output.query_states, output.phrase_ids, output.phrase_mask, features, output.phrase_row,
                sam_pixel_values,
            )
            output.pred_masks = detected.pred_masks
            output.pred_logits = detected.pred_logits
            output.pred_boxes = detected.pred_boxes
            output.semantic_logits = detected.semantic_logits
            output.presence_logits = detected.presence_logits
            output.region_logits = detected.region_logits
        return output


def _last_index(ids: list[int], token: int, before: int) -> int:
    """Index of the last `token` in ids[:before], or -1."""
    for index in range(before - 1, -1, -1):
        if ids[index] == token:
            return index
    return -1


def _key_report(model_dir: Path, missing: list[str], unexpected: list[str], mismatched: list[str], sam3_source: str) -> str:
    def listing(title: str, keys: list[str]) -> str:
        shown = ", ".join(keys[:12]) + (f", ... ({len(keys)} in all)" if len(keys) > 12 else "")
        return f"{title}: {shown}"

    parts = [listing(t, k) for t, k in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched)) if k]
    return (f"weights in {model_dir} do not match the InstructSAM architecture of its config.json "
            f"(SAM3 from {sam3_source}; --sam3-config DIR names another): " + "; ".join(parts))


__all__ = ["InstructSamForSegmentation", "InstructSamOutput", "InstructSamBackbone", "IGNORED_CHECKPOINT_KEYS"]
