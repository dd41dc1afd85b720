"""`instructsam-demo`: the whole pipeline on one machine - a segment node, synthetic cameras
(colour and depth) and this process printing and saving what comes back.

Also the synthetic scenes the benchmark and the tests publish. This file imports nothing.
"""
from __future__ import annotations


def main(argv: list[str] | None = None) -> int:
    """The demo's command line (`run.main`), imported when called."""
    from instructsam_ros.demo.run import main as run_demo

    return run_demo(argv)
