"""Speed of each inference stage, and of the three flows, measured in one run.

Flows compared (same image, instruction and phrase):
  * single_forward: prompt + known answer layout in one prefill, then one SAM3 decode;
  * generation: prefill of the prompt, token-by-token decoding (the query block fed whole
    after `<|object_ref_end|>`), then one SAM3 decode;
  * release_flow: the authors' inference flow - preprocessing, generation, and only then a
    separate SAM3 pass (image encoder + decoder) and post-processing, strictly in sequence. It
    is the sum of those measured stages; on one device it does the same work as `generation`,
    so it serves as the baseline the other two are read against.
The ratio single_forward / generation is the per-frame gain of the ROS node's streaming path.
Stages are timed in the model's own inference layout; the flows in both layouts
(inference_layout.py), which differ only in the positions and masks they build.
"""
from __future__ import annotations

import platform
import statistics
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch

from instructsam_core import tokens as T
from instructsam_core.configuration import INFERENCE_LAYOUTS
from instructsam_core.generation import generate_queries
from instructsam_core.inference_layout import sequence_inputs
from instructsam_core.predictor import Predictor


@dataclass
class BenchReport:
    stages: dict[str, float] = field(default_factory=dict)  # median seconds
    flows: dict[str, dict[str, float]] = field(default_factory=dict)  # layout -> flow -> median seconds
    info: dict[str, str] = field(default_factory=dict)

    def format(self) -> str:
        lines = ["InstructSAM inference benchmark"]
        lines += [f"  {key}: {value}" for key, value in self.info.items()]
        lines.append(f"  stage medians ({self.info.get('inference layout', '?')} layout):")
        lines += [f"    {name:<28} {1000 * value:10.2f} ms" for name, value in self.stages.items()]
        lines.append("  flow medians (end to end, one image, one phrase), per inference layout:")
        for layout, flows in self.flows.items():
            lines += [f"    {f'{name} ({layout})':<28} {1000 * value:10.2f} ms" for name, value in flows.items()]
        for layout, flows in self.flows.items():
            ratio = flows["single_forward"] / flows["generation"]
            lines.append(f"  ratio single_forward / generation ({layout}): {ratio:.3f} "
                         f"({1 / ratio:.2f}x faster per frame)")
        return "\n".join(lines)


@contextmanager
def _layout(model, layout: str):
    """Run with `layout` as the model's inference layout, then restore the model's own."""
    own = model.config.inference_layout
    model.config.inference_layout = layout
    try:
        yield
    finally:
        model.config.inference_layout = own


def _median_time(fn, repeats: int, device: torch.device) -> float:
    samples = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


@torch.no_grad()
def run_benchmark(
    predictor: Predictor,
    width: int = 640,
    height: int = 480,
    phrase: str = "red circle",
    instruction: str = "Which objects are round? Please output the segmentation mask.",
    repeats: int = 5,
    warmup: int = 1,
    verbose: bool = False,
) -> BenchReport:
    model, processor, device = predictor.model, predictor.processor, predictor.device
    image = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    prompt = {k: v.to(device) for k, v in processor([image], [instruction]).items() if k != "image_sizes"}
    full = {k: v.to(device) for k, v in processor([image], [instruction], phrases=[[phrase]]).items()
            if k not in ("labels", "image_sizes")}
    pixel_values = prompt["pixel_values"].to(model.dtype)
    answer = processor.answer_ids(T.answer_for_phrases([phrase], processor.num_queries))
    block = {processor.token_ids[t] for t in (T.MASK_START, T.SEG, T.MASK_END)}
    forced = [t for t in answer if t not in block]
    generated_steps = len(forced)  # one step per emitted token; the block rides with ref_end
    log = print if verbose else (lambda *_, **__: None)

    def vision():
        model.model.get_image_features(pixel_values, prompt["image_grid_thw"], return_dict=True)

    def prefill(batch):
        embeds, visual, deep = model.embed_tokens(batch["input_ids"], batch["pixel_values"].to(model.dtype),
                                                  batch["image_grid_thw"])
        positions, attention, _ = sequence_inputs(model, batch["input_ids"], None, batch["image_grid_thw"],
                                                  batch["mm_token_type_ids"], batch["prompt_lengths"],
                                                  model.config.inference_layout)
        return model.run_language_model(embeds, positions, attention, None, visual, deep)

    def generation_vlm():
        return generate_queries(model, prompt["input_ids"], pixel_values, prompt["image_grid_thw"],
                                prompt["mm_token_type_ids"], max_new_tokens=len(answer), forced_ids=forced)

    sam_pixels = prompt["sam_pixel_values"]
    features = model.encode_sam_images(sam_pixels)
    states = generation_vlm().query_states
    ids, mask = model.sam3_prompt([processor._encode(phrase)])
    index = torch.zeros(1, dtype=torch.long, device=device)
    detected = model.detect(states, ids, mask, features, index, sam_pixels)
    scores, masks = predictor.scores(detected).cpu(), detected.pred_masks.float()

    stages_fns = {
        "preprocess": lambda: processor([image], [instruction]),
        "vlm_vision_tower": vision,
        "vlm_prefill_prompt": lambda: prefill(prompt),
        "vlm_prefill_with_answer": lambda: prefill(full),
        "generation_all_steps": generation_vlm,
        "sam3_image_encoder": lambda: model.encode_sam_images(sam_pixels),
        "sam3_decoder_and_mask_head": lambda: model.detect(states, ids, mask, features, index, sam_pixels),
        "postprocess": lambda: predictor._instances([phrase], scores, masks, (height, width), predictor.threshold),
    }
    def generation_flow():
        batch = {k: v.to(device) for k, v in processor([image], [instruction]).items() if k != "image_sizes"}
        result = generate_queries(model, batch["input_ids"], batch["pixel_values"].to(model.dtype),
                                  batch["image_grid_thw"], batch["mm_token_type_ids"], max_new_tokens=len(answer),
                                  forced_ids=forced)
        sam_pixel_values = batch["sam_pixel_values"]
        out = model.detect(result.query_states, ids, mask, model.encode_sam_images(sam_pixel_values), index,
                           sam_pixel_values)
        predictor._instances([phrase], predictor.scores(out).cpu(), out.pred_masks.float(), (height, width),
                             predictor.threshold)

    # Both flows include preprocessing and post-processing, so their ratio is the per-frame gain.
    flows_fns = {
        "single_forward": lambda: predictor.predict(image, instruction, phrases=[phrase]),
        "generation": generation_flow,
    }
    for fn in stages_fns.values():
        for _ in range(warmup):
            fn()
    report = BenchReport()
    for name, fn in stages_fns.items():
        report.stages[name] = _median_time(fn, repeats, device)
        log(f"  measured {name}: {1000 * report.stages[name]:.2f} ms", flush=True)
    # Decoding steps timed inside the generation loop itself (one token, or one query block).
    steps = [generation_vlm().step_seconds for _ in range(repeats)]
    singles = [sec for run in steps for n, sec in run if n == 1]
    blocks = [sec for run in steps for n, sec in run if n > 1]
    report.stages["vlm_per_generated_token"] = statistics.median(singles) if singles else float("nan")
    report.stages["vlm_query_block_step"] = statistics.median(blocks) if blocks else float("nan")
    # Both layouts take turns within every repeat, so drift of a shared machine hits them alike.
    own_layout = model.config.inference_layout
    timed = {**flows_fns, "generation_vlm": generation_vlm}
    samples: dict[tuple[str, str], list[float]] = {(layout, name): [] for layout in INFERENCE_LAYOUTS for name in timed}
    for layout in INFERENCE_LAYOUTS:
        with _layout(model, layout):
            for fn in timed.values():
                for _ in range(warmup):
                    fn()
    for _ in range(repeats):
        for layout in INFERENCE_LAYOUTS:
            with _layout(model, layout):
                for name, fn in timed.items():
                    samples[layout, name].append(_median_time(fn, 1, device))
    for layout in INFERENCE_LAYOUTS:
        flows = report.flows[layout] = {name: statistics.median(samples[layout, name]) for name in flows_fns}
        # The release's flow: generation, then SAM3 image encoding + decode strictly afterwards
        # and the same post-processing; on one device this is the stage sum.
        flows["release_flow"] = (report.stages["preprocess"] + statistics.median(samples[layout, "generation_vlm"])
                                 + report.stages["sam3_image_encoder"] + report.stages["sam3_decoder_and_mask_head"]
                                 + report.stages["postprocess"])
        figures = ", ".join(f"{name} {1000 * value:.2f} ms" for name, value in flows.items())
        log(f"  measured flows ({layout}): {figures}", flush=True)
    report.info = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)",
        "dtype": str(model.dtype).replace("torch.", ""),
        "input image": f"{width}x{height}",
        "vlm grid (t,h,w)": str(tuple(prompt["image_grid_thw"][0].tolist())),
        "vlm prompt tokens": str(prompt["input_ids"].shape[1]),
        "sam3 input": f"{processor.sam_image_size}x{processor.sam_image_size}",
        "generated tokens": str(generated_steps),
        "inference layout": own_layout,
        "parameters": f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f} M",
        "repeats": str(repeats),
        "torch": torch.__version__,
    }
    return report
