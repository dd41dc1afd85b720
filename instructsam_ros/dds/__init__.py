"""How messages travel: QoS profiles from parameters (`qos`) and the packaged Fast DDS profiles,
with the largest frame each carries (`profiles`). Used by the node, the launch file, the demo,
the benchmark and the tests."""
