"""Resolve a config value that names a built-in (from one explicit dict) or a user's object ('module:attr')."""

from __future__ import annotations

import difflib
import importlib
import inspect
from collections.abc import Mapping
from typing import Any

from selfplay.errors import UserError


def resolve(name: str, builtins: Mapping[str, Any], field: str) -> Any:
    if name in builtins:
        return builtins[name]
    if ":" not in name:
        known = ", ".join(sorted(builtins))
        close = difflib.get_close_matches(name, list(builtins), n=1, cutoff=0.6)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise UserError(f"{field}: unknown '{name}'{hint}; built-ins are {known}, or give a user object as "
                        "'module:attr'")
    module_name, _, attr = name.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise UserError(f"{field}: cannot import module '{module_name}' ({e})") from None
    try:
        return getattr(module, attr)
    except AttributeError:
        raise UserError(f"{field}: module '{module_name}' has no attribute '{attr}'") from None


def check_call(factory: Any, field: str, *args: Any, **options: Any) -> None:
    """Refuse options a factory does not take, naming the config field, before it is called."""
    try:
        inspect.signature(factory).bind(*args, **options)
    except TypeError as e:
        name = getattr(factory, "__name__", factory)
        raise UserError(f"{field}: {name} does not accept these settings ({e})") from None
    except ValueError:  # no signature to inspect (a builtin): let the call itself decide
        pass
