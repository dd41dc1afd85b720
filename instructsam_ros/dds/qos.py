"""QoS profiles from the node's parameters.

The most common "no output" report about perception nodes is a reliability mismatch: a
reliable subscription never matches a best-effort camera. The input therefore defaults to
best effort (it matches both kinds of publisher) with depth 1 (only the latest frame matters);
outputs default to reliable so that recorders and slow consumers get every result.
Instructions are published reliable + transient local (a node started later still receives
the latest one); the node listens with two subscriptions, one volatile (it matches every
publisher, `ros2 topic pub` and other default-QoS tools included) and one transient local
(it also receives the instruction latched by a publisher that was started earlier).
"""
from __future__ import annotations

from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

_RELIABILITY = {"best_effort": ReliabilityPolicy.BEST_EFFORT, "reliable": ReliabilityPolicy.RELIABLE}


def stream_qos(reliability: str, depth: int) -> QoSProfile:
    """Keep-last, volatile QoS for image and result streams."""
    if reliability not in _RELIABILITY:
        raise ValueError(f"reliability must be one of {', '.join(_RELIABILITY)}, got {reliability!r}")
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    return QoSProfile(
        history=HistoryPolicy.KEEP_LAST,
        depth=depth,
        reliability=_RELIABILITY[reliability],
        durability=DurabilityPolicy.VOLATILE,
    )


def instruction_qos() -> QoSProfile:
    """Reliable, transient local, depth 1: the latest instruction reaches late joiners.

    For instruction publishers, and for the node's latched-instruction subscription (which
    does not match volatile publishers: a transient-local reader asks for more than they offer).
    """
    return QoSProfile(
        history=HistoryPolicy.KEEP_LAST,
        depth=1,
        reliability=ReliabilityPolicy.RELIABLE,
        durability=DurabilityPolicy.TRANSIENT_LOCAL,
    )


def live_instruction_qos() -> QoSProfile:
    """Reliable, volatile, depth 10 (ROS's default QoS): matches volatile and transient-local publishers."""
    return QoSProfile(
        history=HistoryPolicy.KEEP_LAST,
        depth=10,
        reliability=ReliabilityPolicy.RELIABLE,
        durability=DurabilityPolicy.VOLATILE,
    )
