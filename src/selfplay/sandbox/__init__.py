"""Run untrusted programs against their tests under OS isolation (bubblewrap), with the verdict computed outside."""

from selfplay.sandbox.box import Limits, Result, Sandbox, SandboxError, SandboxUnavailable, TestSpec, shared_sandbox

__all__ = ["Limits", "Result", "Sandbox", "SandboxError", "SandboxUnavailable", "TestSpec", "shared_sandbox"]
