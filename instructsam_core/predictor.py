"""Predictor: image + instruction -> instances on the input image's pixel grid.

Two paths behind one API:
  * generation: greedy decoding names the target phrases; each phrase's query block is fed as
    soon as its `<|object_ref_end|>` appears; one SAM3 decode for all phrases at the end.
  * single forward: when the phrases are known (given by the caller, cached from the previous
    frame of a stream, or the instruction is itself a bare phrase) the whole answer layout is
    prefilled in one pass - no token-by-token loop. This is the ROS node's per-frame path.
Both use the model config's inference layout (inference_layout.py), which `inference_layout`
overrides at load time: the same positions and masks step by step or in one pass.
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn.functional as F

from instructsam_core import tokens as T
from instructsam_core.tokens import check_instruction
from instructsam_core.configuration import INFERENCE_LAYOUTS, INSTANCE_SCORES
from instructsam_core.errors import UserError
from instructsam_core.generation import generate_queries
from instructsam_core.images import as_rgb_array
from instructsam_core.instances import Instance, Prediction, mask_to_box
from instructsam_core.model_paths import resolve_model_dir
from instructsam_core.modeling import InstructSamForSegmentation
from instructsam_core.processing import InstructSamProcessor
from instructsam_core.sam3_detector import DetectorOutput

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def pick_dtype(device: str, dtype: str | torch.dtype | None) -> torch.dtype:
    """bf16 on GPUs that support it, float32 otherwise (CPU bf16 matmuls are slow on most CPUs)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is not None:
        if dtype not in DTYPES:
            raise UserError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
        return DTYPES[dtype]
    if device.startswith("cuda") and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def check_device(device: str) -> str:
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("device cuda was asked for but no CUDA GPU is available")
    if not (device == "cpu" or device.startswith("cuda") or device == "mps"):
        raise UserError(f"unknown device {device!r}; use cpu, cuda or cuda:N")
    return device


def instance_scores(
    logits: torch.Tensor,
    masks: torch.Tensor,
    rule: str = "query",
    presence_logits: torch.Tensor | None = None,
    nms_overlap: float | None = None,
    semantic_logits: torch.Tensor | None = None,
    region_logits: torch.Tensor | None = None,
) -> torch.Tensor:
    """Scores [P, Q] in [0, 1] from score logits [P, Q], mask logits [P, Q, h, w] and, with SAM3's
    presence head, presence logits [P].

    "query": sigmoid(logits), the release. Every other rule, the presence scaling and the NMS are
    from-scratch aids of this project, not in the release (configuration.RELEASE_BEHAVIOUR).
    "query_x_mask": times the mean mask probability over
    the pixels the mask keeps (logit > 0), 0 for an empty mask - the score head alone cannot see
    how sure the mask is, and an empty mask is no instance at all. Presence logits multiply every
    query of their phrase by sigmoid(presence), as in SAM3. "semantic_x_mask": the mean of
    sigmoid(semantic logits [P, h, w]) over the mask's pixels times the mean mask probability
    (score and presence logits unused). "semantic_x_mask_x_region": that times sigmoid(region
    logits [P, Q]) of the region head, which judges each mask on the image's own pixels. With
    `nms_overlap`, a query scores 0 when more than that share of its binarised mask lies inside
    a better-scoring kept query's mask of the same phrase (greedy mask NMS,
    `suppress_duplicates`; the release has none).
    """
    if rule not in INSTANCE_SCORES:
        raise UserError(f"unknown instance_score rule {rule!r} (choose from {', '.join(INSTANCE_SCORES)})")
    if rule == "query":
        scores = logits.float().sigmoid()
    else:
        inside = (masks > 0).flatten(2).float()
        count = inside.sum(-1).clamp(min=1.0)
        mean_probability = (masks.flatten(2).float().sigmoid() * inside).sum(-1) / count
        if rule == "query_x_mask":
            scores = logits.float().sigmoid() * mean_probability.to(logits.device)
        else:
            if semantic_logits is None:
                raise UserError("instance_score semantic_x_mask needs the detector's semantic logits")
            semantic = semantic_logits.float().flatten(1).sigmoid().to(inside.device)[:, None, :]
            scores = ((semantic * inside).sum(-1) / count * mean_probability).to(logits.device)
            if rule == "semantic_x_mask_x_region":
                if region_logits is None:
                    raise UserError("instance_score semantic_x_mask_x_region needs the region head's logits")
                scores = scores * region_logits.float().sigmoid().to(scores.device)
    if presence_logits is not None and rule in ("query", "query_x_mask"):
        scores = scores * presence_logits.float().sigmoid().to(scores.device)[:, None]
    if nms_overlap is not None:
        scores = suppress_duplicates(scores, masks, nms_overlap)
    return scores


def suppress_duplicates(scores: torch.Tensor, masks: torch.Tensor, overlap: float) -> torch.Tensor:
    """Greedy mask NMS per phrase: scores [P, Q], mask logits [P, Q, h, w] -> scores with every
    query set to 0 when more than `overlap` of its mask (logit > 0) lies inside the mask of a
    better-scoring *kept* query of its phrase. Containment, not IoU: a fragment inside a whole
    instance has a small IoU with it but is no instance of its own (and containment >= IoU, so
    duplicates go too). Ties keep the lower query index; an empty mask suppresses nothing."""
    binary = (masks.detach() > 0).flatten(2).float().to(scores.device)
    intersection = binary @ binary.transpose(1, 2)
    # inside[p, a, b]: share of query a's mask that lies inside query b's mask.
    # One conversion to Python lists: the greedy loop below runs per frame in the ROS node.
    inside = (intersection / binary.sum(-1)[:, :, None].clamp(min=1.0)).tolist()
    orders = torch.argsort(scores, dim=1, descending=True, stable=True).tolist()
    out = scores.clone()
    for phrase, order in enumerate(orders):
        kept: list[int] = []
        for query in order:
            if any(inside[phrase][query][k] > overlap for k in kept):
                out[phrase, query] = 0.0
            else:
                kept.append(query)
    return out


class Predictor:
    """Runs an InstructSAM model on images; see the module docstring for the two paths."""

    def __init__(
        self,
        model: InstructSamForSegmentation,
        processor: InstructSamProcessor,
        threshold: float = 0.3,
        max_instances: int = 100,
        max_new_tokens: int = 128,
        auto_phrase: bool = True,
    ):
        if not 0.0 <= threshold <= 1.0:
            raise UserError(f"threshold must be in [0, 1], got {threshold}")
        if max_instances < 1:
            raise UserError(f"max_instances must be at least 1, got {max_instances}")
        self.model = model.eval()
        self.processor = processor
        self.threshold = threshold
        self.max_instances = max_instances
        self.max_new_tokens = max_new_tokens
        self.auto_phrase = auto_phrase

    @classmethod
    def from_pretrained(
        cls,
        model_dir: str | Path,
        device: str = "cpu",
        dtype: str | torch.dtype | None = None,
        sam3_config: str | Path | None = None,
        inference_layout: str | None = None,
        **kwargs,
    ) -> "Predictor":
        """Load `model_dir` (or `default`, the embedded model) onto `device`; `sam3_config` names a
        SAM3 config directory that overrides where SAM3's architecture comes from (sam3_config.py);
        `inference_layout` ("release" or "trained") overrides the config's (None: keep it)."""
        if inference_layout is not None and inference_layout not in INFERENCE_LAYOUTS:
            raise UserError(
                f"unknown inference layout {inference_layout!r}; choose one of {', '.join(INFERENCE_LAYOUTS)}"
            )
        path = resolve_model_dir(model_dir)
        device = check_device(device)
        model = InstructSamForSegmentation.from_pretrained(path, dtype=pick_dtype(device, dtype), sam3_config=sam3_config)
        if inference_layout is not None:
            model.config.inference_layout = inference_layout
        processor = InstructSamProcessor.from_pretrained(path, model.config)
        return cls(model.to(device), processor, **kwargs)

    @property
    def device(self) -> torch.device:
        return self.model.lm_head.weight.device

    # -------------------------------------------------------------------- API
    def predict(
        self,
        image,
        instruction: str,
        phrases: list[str] | None = None,
        threshold: float | None = None,
    ) -> Prediction:
        """Instances for one image; `phrases` selects the single-forward path."""
        return self.predict_batch([image], [instruction], None if phrases is None else [phrases], threshold)[0]

    @torch.no_grad()
    def predict_batch(
        self,
        images: list,
        instructions: list[str],
        phrases: list[list[str] | None] | None = None,
        threshold: float | None = None,
    ) -> list[Prediction]:
        """Instances for several (image, instruction) pairs; equal to calling `predict` on each."""
        if len(images) != len(instructions):
            raise UserError("predict_batch needs one instruction per image")
        threshold = self.threshold if threshold is None else threshold
        if not 0.0 <= threshold <= 1.0:
            raise UserError(f"threshold must be in [0, 1], got {threshold}")
        arrays = [as_rgb_array(image) for image in images]
        instructions = [check_instruction(text) for text in instructions]
        wanted = list(phrases) if phrases is not None else [None] * len(arrays)
        for i, text in enumerate(instructions):
            if wanted[i] is None and self.auto_phrase:
                bare = T.plain_phrase(text)
                wanted[i] = [bare] if bare else None
            if wanted[i] is not None:
                wanted[i] = [T.normalize_phrase(p) for p in wanted[i] if p and p.strip()]
                if not wanted[i]:
                    raise UserError("phrases were given but all are empty")
        timings: dict[str, float] = {}
        known = [i for i in range(len(arrays)) if wanted[i] is not None]
        unknown = [i for i in range(len(arrays)) if wanted[i] is None]
        # Per sample: (phrase texts, answer text, scores [P, Q], mask logits [P, Q, h, w]).
        raw: dict[int, tuple[list[str], str, torch.Tensor, torch.Tensor]] = {}
        if known:
            raw.update(self._single_forward([arrays[i] for i in known], [instructions[i] for i in known],
                                            [wanted[i] for i in known], known, timings))
        for i in unknown:
            raw[i] = self._generate(arrays[i], instructions[i], timings)
        results = []
        for i, array in enumerate(arrays):
            names, answer, scores, masks = raw[i]
            with self._timed(timings, "postprocess"):
                instances = self._instances(names, scores, masks, array.shape[:2], threshold)
            results.append(Prediction(instructions[i], names, instances, array.shape[:2], answer, dict(timings)))
        return results

    # ------------------------------------------------------------------ paths
    def _single_forward(self, arrays, instructions, phrase_lists, indices, timings):
        with self._timed(timings, "preprocess"):
            batch = self.processor(arrays, instructions, phrases=phrase_lists, device=self.device)
            batch = {k: v for k, v in batch.items() if k not in ("labels", "image_sizes")}
        sam_pixel_values = batch.pop("sam_pixel_values")
        with self._timed(timings, "vlm"):
            out = self.model(**batch, compute_logits=False)
        rows = out.phrase_row.tolist()
        scores, masks = self._detect(out.query_states, out.phrase_ids, out.phrase_mask, out.phrase_row,
                                     sam_pixel_values, timings)
        per_sample, start = {}, 0
        for local, index in enumerate(indices):
            count = rows.count(local)
            per_sample[index] = (phrase_lists[local], "", scores[start : start + count], masks[start : start + count])
            start += count
        return per_sample

    def _generate(self, array, instruction, timings):
        with self._timed(timings, "preprocess"):
            batch = self.processor([array], [instruction], device=self.device)
        with self._timed(timings, "vlm"):
            result = generate_queries(
                self.model, batch["input_ids"], batch["pixel_values"].to(self.model.dtype), batch["image_grid_thw"],
                batch["mm_token_type_ids"], max_new_tokens=self.max_new_tokens,
            )
        answer = self.processor.decode(result.token_ids)
        if result.query_states is None:
            empty = torch.zeros(0, self.model.config.max_seg_nums)
            return [], answer, empty, empty[:, :, None, None]
        names = [T.normalize_phrase(self.processor.decode(p)) for p in result.phrases]
        ids, mask = self.model.sam3_prompt(result.phrases)
        index = torch.zeros(len(names), dtype=torch.long, device=self.device)
        scores, masks = self._detect(result.query_states, ids, mask, index, batch["sam_pixel_values"], timings)
        return names, answer, scores, masks

    def _detect(self, queries, phrase_ids, phrase_mask, image_index, sam_pixel_values, timings):
        """SAM3 for every phrase: images encoded once, phrases decoded together."""
        with self._timed(timings, "sam_image_encoder"):
            features = self.model.encode_sam_images(sam_pixel_values)
        with self._timed(timings, "sam_decoder"):
            out = self.model.detect(queries, phrase_ids, phrase_mask, features, image_index, sam_pixel_values)
        return self.scores(out).cpu(), out.pred_masks.detach().float()

    def scores(self, out: DetectorOutput) -> torch.Tensor:
        """Instance scores [P, Q] of a detector output under the model's `instance_score` rule."""
        presence = None if out.presence_logits is None else out.presence_logits.detach()
        semantic = None if out.semantic_logits is None else out.semantic_logits.detach()
        region = None if out.region_logits is None else out.region_logits.detach()
        return instance_scores(out.pred_logits.detach(), out.pred_masks.detach(), self.model.config.instance_score,
                               presence, self.model.config.mask_nms_overlap, semantic, region)

    def _instances(self, names, scores, masks, size, threshold) -> list[Instance]:
        """Keep queries scoring above the threshold, upsample their masks to the input size."""
        if scores.numel() == 0:
            return []
        flat = scores.flatten()
        keep = torch.nonzero(flat > threshold).flatten() if threshold > 0 else torch.arange(flat.numel())
        keep = keep[flat[keep].argsort(descending=True, stable=True)][: self.max_instances]
        if keep.numel() == 0:
            return []
        num_queries = scores.shape[1]
        phrase_index, query_index = keep // num_queries, keep % num_queries
        selected = masks[phrase_index.to(masks.device), query_index.to(masks.device)]
        # Bilinear upsampling of the logits straight to the input size (SAM3 saw a stretched square).
        upsampled = F.interpolate(selected[:, None], size=tuple(size), mode="bilinear", align_corners=False)[:, 0]
        binary = (upsampled > 0).cpu().numpy()
        instances = []
        for k in range(keep.numel()):
            p, q = int(phrase_index[k]), int(query_index[k])
            instances.append(Instance(names[p], float(scores[p, q]), binary[k], mask_to_box(binary[k]), p, q))
        return instances

    @contextmanager
    def _timed(self, timings: dict[str, float], stage: str):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        start = time.perf_counter()
        yield
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        timings[stage] = timings.get(stage, 0.0) + time.perf_counter() - start
