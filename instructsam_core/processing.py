"""InstructSamProcessor: image + instruction (+ answer) -> the tensors the model takes.

Two image branches, both as the release's fast image processors compute them
(image_preprocessing.py, in torch, on the model's device): Qwen3-VL's dynamic-resolution patches
for the VLM, and SAM3's square input. Token ids come from the tokenizer and are cross-checked
against the config's `*_token_index` fields.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from instructsam_core import tokens as T
from instructsam_core.configuration import InstructSamConfig, load_model_config
from instructsam_core.errors import CheckpointError
from instructsam_core.image_preprocessing import image_tensor, qwen_pixels, sam3_pixels
from instructsam_core.images import as_rgb_array
from instructsam_core.model_directory import read_json_object

IGNORE_INDEX = -100
PREPROCESSOR_FILE = "preprocessor_config.json"


def write_preprocessor_config(
    model_dir: str | Path, patch_size: int, merge_size: int, min_pixels: int, max_pixels: int
) -> None:
    """Qwen-style preprocessor_config.json, read back by `InstructSamProcessor.from_pretrained`."""
    config = {
        "image_processor_type": "Qwen2VLImageProcessorFast",
        "patch_size": patch_size,
        "merge_size": merge_size,
        "temporal_patch_size": 2,
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5],
        "size": {"shortest_edge": min_pixels, "longest_edge": max_pixels},
    }
    Path(model_dir, PREPROCESSOR_FILE).write_text(json.dumps(config, indent=2) + "\n")


def read_preprocessor_config(model_dir: Path) -> dict:
    """Pixel budget and mean/std of a model directory's preprocessor_config.json (Qwen's defaults
    where a field is absent)."""
    path = model_dir / PREPROCESSOR_FILE
    if not path.is_file():
        return {}
    raw = read_json_object(path)
    size = raw.get("size") or {}
    settings = {
        "min_pixels": size.get("shortest_edge", raw.get("min_pixels")),
        "max_pixels": size.get("longest_edge", raw.get("max_pixels")),
        "image_mean": raw.get("image_mean"),
        "image_std": raw.get("image_std"),
    }
    settings = {key: value for key, value in settings.items() if value is not None}
    for key in ("min_pixels", "max_pixels"):
        value = settings.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 1 << 30):
            raise CheckpointError(f"{path}: {key} must be a positive integer, got {value!r}")
    for key in ("image_mean", "image_std"):
        value = settings.get(key)
        if value is not None and not (isinstance(value, list) and len(value) == 3
                                      and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
                                      and (key == "image_mean" or all(v > 0 for v in value))):
            raise CheckpointError(f"{path}: {key} must be three numbers{' > 0' if key == 'image_std' else ''}, got {value!r}")
    return settings


class InstructSamProcessor:
    """Builds prompts in Qwen's chat layout, answers in InstructSAM's layout, labels and pixels."""

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        config: InstructSamConfig,
        min_pixels: int = 64 * 32 * 32,
        max_pixels: int = 1280 * 32 * 32,
        image_mean: list[float] | None = None,
        image_std: list[float] | None = None,
    ):
        self.tokenizer = tokenizer
        self.config = config
        vision = config.vision_config
        self.patch_size = int(vision.patch_size)
        self.merge_size = int(vision.spatial_merge_size)
        self.temporal_patch_size = int(getattr(vision, "temporal_patch_size", 2))
        self.min_pixels = int(min_pixels)
        self.max_pixels = int(max_pixels)
        self.image_mean = list(image_mean or [0.5, 0.5, 0.5])
        self.image_std = list(image_std or [0.5, 0.5, 0.5])
        self.sam_image_size = config.sam3_image_size
        self.num_queries = config.max_seg_nums
        self.token_ids = {tok: self._require_token(tok) for tok in (*T.REQUIRED_ADDED_TOKENS, T.REF_START, T.REF_END, T.IM_END, T.IMAGE_PAD)}
        self.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.token_ids[T.IM_END]
        self._fill_config_token_ids()
        self._prompt_head = self._encode(f"{T.IM_START}user\n{T.VISION_START}")
        self._adds_prefix_space = self.tokenizer.decode(self._encode("a")) == " a"
        self._special_ids = set(self.tokenizer.all_special_ids)

    @classmethod
    def from_pretrained(cls, model_dir: str | Path, config: InstructSamConfig | None = None) -> "InstructSamProcessor":
        """Tokenizer and preprocessor settings from a local model directory (never downloads)."""
        model_dir = Path(model_dir)
        if config is None:
            config, _ = load_model_config(model_dir)
        try:
            tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        except (OSError, ValueError, TypeError) as error:
            raise CheckpointError(f"cannot load the tokenizer in {model_dir}: {str(error).splitlines()[0]}") from None
        # A plain Qwen tokenizer may lack InstructSAM's tokens; Qwen's spare rows take them, in the
        # release's order. The ids are then cross-checked against config.json.
        missing = [tok for tok in T.ADDED_TOKENS if tok not in tokenizer.get_vocab()]
        if missing and any(tok in T.REQUIRED_ADDED_TOKENS for tok in missing):
            tokenizer.add_special_tokens({"additional_special_tokens": missing}, replace_extra_special_tokens=False)
        return cls(tokenizer, config, **read_preprocessor_config(model_dir))

    # ------------------------------------------------------------------ tokens
    def _fill_config_token_ids(self) -> None:
        """Token ids come from the tokenizer; a config field that names another id is an error.

        A config.json without a field gets it from the tokenizer (the config object is shared with
        the model, so the model sees it too). `<REGION>` is checked only where both know it.
        """
        fields = {"seg_token_index": T.SEG, "seg_start_token_index": T.MASK_START, "seg_end_token_index": T.MASK_END,
                  "ref_start_token_index": T.REF_START, "ref_end_token_index": T.REF_END, "im_end_token_id": T.IM_END}
        region = self.tokenizer.get_vocab().get(T.REGION)
        checks = [(field_name, token, self.token_ids[token]) for field_name, token in fields.items()]
        if region is not None:
            checks.append(("region_token_index", T.REGION, int(region)))
        for field_name, token, token_id in checks:
            if getattr(self.config, field_name) is None:
                setattr(self.config, field_name, token_id)
            elif getattr(self.config, field_name) != token_id:
                raise CheckpointError(
                    f"config.json says {field_name} = {getattr(self.config, field_name)} but the tokenizer maps "
                    f"{token} to {token_id}"
                )

    def _require_token(self, token: str) -> int:
        token_id = self.tokenizer.convert_tokens_to_ids(token)
        if token_id is None or token_id == self.tokenizer.unk_token_id:
            raise CheckpointError(f"the tokenizer has no {token} token")
        return int(token_id)

    def _encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        """Text of `ids`. A tokenizer that puts a space before every run of ordinary text (the tiny
        tokenizer does, so that a phrase has the same tokens in the prompt and in the answer) gets
        that space taken off again, so "red circle" decodes as it was written."""
        if not self._adds_prefix_space:
            return self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)
        pieces: list[str] = []
        run: list[int] = []
        for token in [*ids, None]:
            if token is not None and token not in self._special_ids:
                run.append(token)
                continue
            if run:
                text = self.tokenizer.decode(run)
                pieces.append(text[1:] if text.startswith(" ") else text)
                run = []
            if token is not None and not skip_special_tokens:
                pieces.append(self.tokenizer.decode([token]))
        return "".join(pieces)

    def answer_ids(self, answer: str) -> list[int]:
        """Token ids of an assistant answer, closed by <|im_end|>."""
        return self._encode(answer) + [self.token_ids[T.IM_END]]

    def prompt_ids(self, instruction: str, num_image_tokens: int) -> list[int]:
        """User turn with one image and the instruction, then the opening of the assistant turn."""
        tail = self._encode(f"{T.VISION_END}{instruction}{T.IM_END}\n{T.IM_START}assistant\n")
        return self._prompt_head + [self.token_ids[T.IMAGE_PAD]] * num_image_tokens + tail

    # ------------------------------------------------------------------ images
    def pixels(self, images: list[np.ndarray], device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
        """Both image branches for RGB uint8 arrays, computed on `device`: Qwen3-VL patches
        (`pixel_values`, `image_grid_thw`) and SAM3's square input (`sam_pixel_values`)."""
        tensors = [image_tensor(image, device) for image in images]
        pixel_values, grid = qwen_pixels(
            tensors, self.patch_size, self.merge_size, self.temporal_patch_size, self.min_pixels, self.max_pixels,
            self.image_mean, self.image_std,
        )
        return {"pixel_values": pixel_values, "image_grid_thw": grid.to(pixel_values.device),
                "sam_pixel_values": sam3_pixels(tensors, self.sam_image_size)}

    # ------------------------------------------------------------------- batch
    def __call__(
        self,
        images: list,
        instructions: list[str],
        answers: list[str | None] | None = None,
        phrases: list[list[str]] | None = None,
        device: torch.device | str = "cpu",
    ) -> dict[str, torch.Tensor]:
        """Encode a batch; row b holds image b and instruction b. Tensors are made on `device`.

        `answers` (assistant text in the answer layout) are appended with labels for training;
        `phrases` build that layout from target phrases (the single-forward inference path).
        Without either, the sequence ends at the assistant prompt (generation).
        Rows are right-padded; `labels` are IGNORE_INDEX outside the answers, at every `[SEG]`
        and at the token after each `[SEG]` (the model does not predict its own queries).
        `prompt_lengths` [B] say where each row's answer starts (the release's inference layout
        prefills the prompt bidirectionally, inference_layout.py).
        """
        if len(images) != len(instructions):
            raise ValueError("one instruction per image")
        if phrases is not None:
            answers = [T.answer_for_phrases(p, self.num_queries) for p in phrases]
        arrays = [as_rgb_array(image) for image in images]
        batch = self.pixels(arrays, device)
        grid = batch["image_grid_thw"].tolist()
        merge = self.merge_size**2
        rows, label_rows, prompt_lengths = [], [], []
        for b, instruction in enumerate(instructions):
            prompt = self.prompt_ids(instruction, grid[b][0] * grid[b][1] * grid[b][2] // merge)
            answer = self.answer_ids(answers[b]) if answers is not None and answers[b] is not None else []
            rows.append(prompt + answer)
            prompt_lengths.append(len(prompt))
            label_rows.append([IGNORE_INDEX] * len(prompt) + self._labels(answer))
        length = max(len(r) for r in rows)
        input_ids = torch.full((len(rows), length), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), length), dtype=torch.long)
        labels = torch.full((len(rows), length), IGNORE_INDEX, dtype=torch.long)
        for b, (row, label_row) in enumerate(zip(rows, label_rows)):
            input_ids[b, : len(row)] = torch.tensor(row)
            attention_mask[b, : len(row)] = 1
            labels[b, : len(row)] = torch.tensor(label_row)
        batch.update({
            "input_ids": input_ids.to(device),
            "attention_mask": attention_mask.to(device),
            "mm_token_type_ids": (input_ids == self.token_ids[T.IMAGE_PAD]).int().to(device),
            "prompt_lengths": torch.tensor(prompt_lengths, dtype=torch.long, device=device),
            "image_sizes": torch.tensor([a.shape[:2] for a in arrays], dtype=torch.long),
        })
        if answers is not None:
            batch["labels"] = labels.to(device)
        return batch

    def _labels(self, answer: list[int]) -> list[int]:
        seg = self.token_ids[T.SEG]
        labels = []
        for i, token in enumerate(answer):
            after_seg = i > 0 and answer[i - 1] == seg
            labels.append(IGNORE_INDEX if token == seg or after_seg else token)
        return labels
