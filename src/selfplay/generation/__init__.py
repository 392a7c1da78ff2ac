"""Generation backends behind one interface; a config picks one from GENERATORS or names 'module:attr'."""

from __future__ import annotations

from selfplay.generation.base import Generator, SamplingParams
from selfplay.generation.hf import TransformersGenerator

__all__ = ["GENERATORS", "Generator", "SamplingParams", "TransformersGenerator"]

GENERATORS = {"transformers": TransformersGenerator}
