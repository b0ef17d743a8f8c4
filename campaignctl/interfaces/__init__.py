"""Interfaces: how devices are reached. One module per type, imported only when used.

A type module provides ``Settings`` (a pydantic model of the manifest's settings) and
``Driver`` (see ``campaignctl.interfaces.base.Driver``).
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

#: interface type → module (``http`` would shadow the standard library's name)
_MODULES = {"mqtt": "mqtt", "http": "http_poll", "webhook": "webhook"}
TYPES = tuple(_MODULES)


def module(kind: str) -> ModuleType:
    if kind not in _MODULES:
        raise ValueError(f"unknown interface type {kind!r}")
    return importlib.import_module(f"campaignctl.interfaces.{_MODULES[kind]}")


def settings_model(kind: str) -> Any:
    return module(kind).Settings


def driver(name: str, kind: str, settings: dict[str, Any]) -> Any:
    """The delivery driver of interface ``name``, from its stored ``settings``: they were
    checked before they were stored, so settings that do not validate are the database's
    (changed outside campaignctl or damaged)."""
    from pydantic import ValidationError

    from campaignctl import db

    try:
        mod = module(kind)
        valid = mod.Settings.model_validate(settings)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise db.UnreadableData(f"interface {name!r}: {'.'.join(map(str, first['loc']))}: {first['msg']}") from None
    except ValueError as exc:  # an unknown type
        raise db.UnreadableData(f"interface {name!r}: {exc}") from None
    return mod.Driver(name, valid)
