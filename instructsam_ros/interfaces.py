"""The generated ROS 2 interfaces, with a clear message when they have not been built.

`instructsam_ros.msg` / `.srv` come from the ament_cmake build, not from `pip install`; without
them the first import error would only say "No module named 'instructsam_ros.msg'".
"""
from __future__ import annotations

try:
    from instructsam_ros.msg import Instance, Instance3D, InstanceSegmentation
    from instructsam_ros.srv import Segment
except ImportError as error:  # pragma: no cover - depends on the installation
    raise ImportError(
        "the instructsam_ros interfaces (msg/srv) are not built or not found: in a source checkout run "
        "`bash scripts/build_ros.sh`; with an apt-installed ROS 2 run `colcon build` and "
        f"`source install/setup.bash` ({error})"
    ) from error

__all__ = ["Instance", "Instance3D", "InstanceSegmentation", "Segment"]
