"""Reporting: the HTML report of a run, and metrics mirrored to TensorBoard when it is installed."""

from selfplay.reporting.report import write_report
from selfplay.reporting.tensorboard import write_tensorboard

__all__ = ["write_report", "write_tensorboard"]
