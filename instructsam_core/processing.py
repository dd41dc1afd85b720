"""InstructSamProcessor: image + instruction (+ answer) -> the tensors the model takes.

Two image branches (reference-design.md, "Preprocessing"): Qwen3-VL's dynamic-resolution
patches for the VLM, and a 1008x1008 (config's size) non-aspect-preserving resize with mean/std
0.5 for SAM3. The SAM3 resize is done here with OpenCV because transformers' Sam3Processor needs
torchvision, which does not install next to the CPU torch (docs/architecture.md).
"""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import torch
from transformers import AutoTokenizer, PreTrainedTokenizerBase, Qwen2VLImageProcessorPil

from instructsam_core import tokens as T
from instructsam_core.configuration import InstructSamConfig
from instructsam_core.errors import CheckpointError
from instructsam_core.images import as_rgb_array

IGNORE_INDEX = -100
PREPROCESSOR_FILE = "preprocessor_config.json"


def write_preprocessor_config(
    model_dir: str | Path, patch_size: int, merge_size: int, min_pixels: int, max_pixels: int
) -> None:
    """Qwen-style preprocessor_config.json, read back by `InstructSamProcessor.from_pretrained`."""
    config = {
        "image_processor_type": "Qwen2VLImageProcessor",
        "patch_size": patch_size,
        "merge_size": merge_size,
        "temporal_patch_size": 2,
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5],
        "size": {"shortest_edge": min_pixels, "longest_edge": max_pixels},
    }
    Path(model_dir, PREPROCESSOR_FILE).write_text(json.dumps(config, indent=2) + "\n")


class InstructSamProcessor:
    """Builds prompts in Qwen's chat layout, answers in InstructSAM's layout, labels and pixels."""

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        config: InstructSamConfig,
        min_pixels: int = 64 * 32 * 32,
        max_pixels: int = 1280 * 32 * 32,
    ):
        self.tokenizer = tokenizer
        self.config = config
        vision = config.vision_config
        self.patch_size = int(vision.patch_size)
        self.merge_size = int(vision.spatial_merge_size)
        self.min_pixels = int(min_pixels)
        self.max_pixels = int(max_pixels)
        self.sam_image_size = config.sam3_image_size
        self.num_queries = config.num_queries_per_phrase
        self._image_processors: dict[int, Qwen2VLImageProcessorPil] = {}
        self.token_ids = {tok: self._require_token(tok) for tok in (*T.ADDED_TOKENS, T.REF_START, T.REF_END, T.IM_END, T.IMAGE_PAD)}
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
            config = InstructSamConfig.from_pretrained(model_dir, local_files_only=True)
        try:
            tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        except (OSError, ValueError) as error:
            raise CheckpointError(f"cannot load the tokenizer in {model_dir}: {error}") from None
        # The released tokenizer may lack InstructSAM's tokens; Qwen's spare rows take them.
        missing = [tok for tok in T.ADDED_TOKENS if tok not in tokenizer.get_vocab()]
        if missing:
            tokenizer.add_special_tokens({"additional_special_tokens": missing}, replace_extra_special_tokens=False)
        settings = {}
        path = model_dir / PREPROCESSOR_FILE
        if path.is_file():
            raw = json.loads(path.read_text())
            size = raw.get("size") or {}
            settings["min_pixels"] = size.get("shortest_edge", raw.get("min_pixels", 64 * 32 * 32))
            settings["max_pixels"] = size.get("longest_edge", raw.get("max_pixels", 1280 * 32 * 32))
        return cls(tokenizer, config, **settings)

    # ------------------------------------------------------------------ tokens
    def _fill_config_token_ids(self) -> None:
        """A Qwen3-VL-style config.json may not name InstructSAM's token ids: take them from the
        tokenizer (the config object is shared with the model, so the model sees them too)."""
        fields = {"seg_token_id": T.SEG, "mask_start_token_id": T.MASK_START, "mask_end_token_id": T.MASK_END,
                  "ref_start_token_id": T.REF_START, "ref_end_token_id": T.REF_END, "im_end_token_id": T.IM_END}
        for field_name, token in fields.items():
            if getattr(self.config, field_name) is None:
                setattr(self.config, field_name, self.token_ids[token])
            elif getattr(self.config, field_name) != self.token_ids[token]:
                raise CheckpointError(
                    f"config.json says {field_name} = {getattr(self.config, field_name)} but the tokenizer maps "
                    f"{token} to {self.token_ids[token]}"
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
    def _image_processor(self) -> Qwen2VLImageProcessorPil:
        processor = self._image_processors.get(self.max_pixels)
        if processor is None:
            processor = Qwen2VLImageProcessorPil(
                patch_size=self.patch_size,
                merge_size=self.merge_size,
                temporal_patch_size=2,
                image_mean=[0.5, 0.5, 0.5],
                image_std=[0.5, 0.5, 0.5],
                size={"shortest_edge": self.min_pixels, "longest_edge": self.max_pixels},
            )
            self._image_processors = {self.max_pixels: processor}
        return processor

    def vlm_pixels(self, images: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        """Qwen3-VL patches for all images, concatenated, and their (t, h, w) grids."""
        out = self._image_processor()(images=images, return_tensors="pt")
        return out["pixel_values"], out["image_grid_thw"]

    def sam_pixels(self, images: list[np.ndarray]) -> torch.Tensor:
        """[N, 3, S, S] float32: resized without keeping the aspect ratio, scaled to [-1, 1]."""
        size = self.sam_image_size
        batch = np.empty((len(images), size, size, 3), dtype=np.float32)
        for i, image in enumerate(images):
            batch[i] = cv2.resize(image, (size, size), interpolation=cv2.INTER_LINEAR)
        batch = batch / 127.5 - 1.0
        return torch.from_numpy(batch).permute(0, 3, 1, 2).contiguous()

    # ------------------------------------------------------------------- batch
    def __call__(
        self,
        images: list,
        instructions: list[str],
        answers: list[str | None] | None = None,
        phrases: list[list[str]] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Encode a batch; row b holds image b and instruction b.

        `answers` (assistant text in the answer layout) are appended with labels for training;
        `phrases` build that layout from target phrases (the single-forward inference path).
        Without either, the sequence ends at the assistant prompt (generation).
        Rows are right-padded; `labels` are IGNORE_INDEX outside the answers, at every `[SEG]`
        and at the token after each `[SEG]` (the model does not predict its own queries).
        """
        if len(images) != len(instructions):
            raise ValueError("one instruction per image")
        if phrases is not None:
            answers = [T.answer_for_phrases(p, self.num_queries) for p in phrases]
        arrays = [as_rgb_array(image) for image in images]
        pixel_values, grid = self.vlm_pixels(arrays)
        merge = self.merge_size**2
        rows, label_rows = [], []
        for b, instruction in enumerate(instructions):
            prompt = self.prompt_ids(instruction, int(grid[b].prod()) // merge)
            answer = self.answer_ids(answers[b]) if answers is not None and answers[b] is not None else []
            rows.append(prompt + answer)
            label_rows.append([IGNORE_INDEX] * len(prompt) + self._labels(answer))
        length = max(len(r) for r in rows)
        input_ids = torch.full((len(rows), length), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), length), dtype=torch.long)
        labels = torch.full((len(rows), length), IGNORE_INDEX, dtype=torch.long)
        for b, (row, label_row) in enumerate(zip(rows, label_rows)):
            input_ids[b, : len(row)] = torch.tensor(row)
            attention_mask[b, : len(row)] = 1
            labels[b, : len(row)] = torch.tensor(label_row)
        batch = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "mm_token_type_ids": (input_ids == self.token_ids[T.IMAGE_PAD]).int(),
            "pixel_values": pixel_values,
            "image_grid_thw": grid,
            "sam_pixel_values": self.sam_pixels(arrays),
            "image_sizes": torch.tensor([a.shape[:2] for a in arrays], dtype=torch.long),
        }
        if answers is not None:
            batch["labels"] = labels
        return batch

    def _labels(self, answer: list[int]) -> list[int]:
        seg = self.token_ids[T.SEG]
        labels = []
        for i, token in enumerate(answer):
            after_seg = i > 0 and answer[i - 1] == seg
            labels.append(IGNORE_INDEX if token == seg or after_seg else token)
        return labels
