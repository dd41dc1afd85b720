"""The segment node and its camera streams: `ros2 run instructsam_ros segment_node`,
`instructsam-segment-node`, `python -m instructsam_ros.segment_node`.

The lifecycle node (`node.py`) with its parts - parameters, instructions, the inference worker,
the Segment service, /diagnostics - one camera's topics (`camera_stream.py`), the model side
without ROS (`segmenter.py`) and the executor and frame slots between them. This file imports
nothing, so the ROS-free modules here (`cameras`, `parameters`, `segmenter`) import without rclpy.
"""
from __future__ import annotations


def main(argv: list[str] | None = None) -> int:
    """The node's process (`process.main`), imported when called."""
    from instructsam_ros.segment_node.process import main as run_node

    return run_node(argv)
