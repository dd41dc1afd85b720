"""Shared fixtures: one tiny random-init model directory per test session."""
from __future__ import annotations

import os

import pytest

# DDS discovery stays on this machine in every test that touches ROS.
os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
os.environ.setdefault("ROS_DOMAIN_ID", "87")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A complete tiny model directory written by `write_tiny_model` (seed 0)."""
    from instructsam_core.tiny import write_tiny_model

    return write_tiny_model(tmp_path_factory.mktemp("tiny_model"), seed=0)
