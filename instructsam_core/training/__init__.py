"""Training: data reading, Hungarian matching, set-prediction losses, the trainer and recipes.

Import the submodules you need; this package does not import torch-heavy code eagerly.
"""
