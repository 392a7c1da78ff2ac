"""selfplay: make a language model better by training it on its own verified output."""

__version__ = "0.1.0"
