"""Seeded synthetic chest X-ray datasets written in the real download layouts (see ``api.generate``)."""

from .api import DATASET_NAMES, DEFAULT_SIZES, generate

__all__ = ["DATASET_NAMES", "DEFAULT_SIZES", "generate"]
