"""The driver: run state, stages, resume."""
