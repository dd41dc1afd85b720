"""InstructSAM core: a Qwen3-VL model with instance queries feeding SAM3's detector."""

__version__ = "0.1.0"
