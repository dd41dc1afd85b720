"""Recorded bags: `instructsam annotate-bag` (`command`, contributed to the core's CLI through
the `instructsam.commands` entry point). Reads and writes rosbag2 through rosbags, without ROS.
This file imports nothing, so the command registers without rosbags installed."""
