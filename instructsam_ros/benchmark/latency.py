"""Latency and drops of one node per input size: at fixed rates, then the peak rate with under
5 % dropped frames (bisection)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from instructsam_core.errors import UserError
from instructsam_ros.benchmark.session import INSTRUCTION, Session, frame_message, hardware, peak_rate


def run_latency(args: argparse.Namespace, model: str, model_name: str, scratch: Path) -> dict:
    session = Session(model, args.device, args.threshold, scratch / "node.log")
    report = {"model": model_name, "device": args.device, "hardware": hardware(), "instruction": INSTRUCTION, "sizes": []}
    try:
        session.wait_ready(args.startup_timeout)
        for width, height in args.sizes:
            msg = frame_message(width, height)
            # Warm this size up and estimate the model's capacity from a slow stream.
            probe = session.stream(msg, 2.0, 2.0)
            if not probe["answered"]:
                raise UserError(f"no results at {width}x{height}; see {scratch / 'node.log'}")
            entry = {"size": f"{width}x{height}", "fixed_rates": [], "peak": None}
            for rate in args.rates:
                result = session.stream(msg, rate, args.seconds)
                entry["fixed_rates"].append(result)
                print(json.dumps({"size": entry["size"], **result}), flush=True)
            capacity = 1000.0 / max(probe["e2e_median_ms"], 1e-3)
            best, runs = peak_rate(session, msg, max(0.5, 0.5 * capacity), 2.0 * capacity, args.seconds, args.peak_steps)
            entry["peak"] = {"rate": best, "runs": runs}
            print(json.dumps({"size": entry["size"], "peak_rate_under_5pct_drops": best}), flush=True)
            report["sizes"].append(entry)
    finally:
        session.close()
    return report


def markdown(report: dict) -> str:
    lines = [
        f"Model: {report['model']}; device: {report['device']}; hardware: {report['hardware']}; "
        f"instruction {report['instruction']!r} (streaming single-forward path).",
        "",
        "| input | rate (Hz) | answered / sent | drops | e2e median (ms) | e2e p99 (ms) | model median (ms) | overhead e2e-model (ms) | in-node overhead (ms) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for entry in report["sizes"]:
        for r in entry["fixed_rates"]:
            if not r["answered"]:
                lines.append(f"| {entry['size']} | {r['rate']:g} | 0 / {r['sent']} | 100 % | - | - | - | - | - |")
                continue
            lines.append(
                f"| {entry['size']} | {r['rate']:g} | {r['answered']} / {r['sent']} | {r['drop_fraction'] * 100:.1f} % | "
                f"{r['e2e_median_ms']:.1f} | {r['e2e_p99_ms']:.1f} | {r['model_median_ms']:.1f} | "
                f"{r['overhead_median_ms']:.1f} | {r['in_node_overhead_median_ms']:.1f} |"
            )
    lines.append("")
    for entry in report["sizes"]:
        lines.append(f"Peak rate with < 5 % drops at {entry['size']}: {entry['peak']['rate']:.1f} Hz")
    return "\n".join(lines)
