"""`python -m instructsam_ros.benchmark`: segment_node measured over real DDS - latency and
drops per input size and rate, one node of N cameras against N nodes, and the 3-D step."""
