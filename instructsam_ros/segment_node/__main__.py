"""`python -m instructsam_ros.segment_node` (ROS arguments accepted)."""
import sys

from instructsam_ros.segment_node import main

sys.exit(main())
