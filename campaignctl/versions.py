"""Firmware versions: how an OTA campaign compares what a device reports with its target.

Versions compare as semantic versions where both parse (``5.1.0``, ``v5.1``,
``5.1.0-rc.1``; a missing minor or patch is 0), else as text equality only: a device
reporting ``build-2024-11`` is neither older nor newer than ``5.1.0``, only different.
``from`` patterns are versions whose parts may be ``x`` or ``*`` (``5.0.x``, ``5.*``).
"""

from __future__ import annotations

import json
import re
from typing import Any, NamedTuple

from campaignctl.values import cut

_SEMVER = re.compile(r"^[vV]?(\d{1,18})(?:\.(\d{1,18}))?(?:\.(\d{1,18}))?(?:-([0-9A-Za-z.-]+))?(?:\+[0-9A-Za-z.-]+)?$")
#: Characters of a reported version quoted in a reason.
SHOWN = 64
_PART = re.compile(r"^(\d{1,18}|[xX*])$")


class Version(NamedTuple):
    release: tuple[int, int, int]
    pre: tuple[tuple[int, Any], ...] | None  # None: a release, which sorts after its pre-releases

    def key(self) -> tuple:
        return (self.release, self.pre is None, self.pre or ())


def parse(text: str) -> Version | None:
    match = _SEMVER.match(text.strip())
    if match is None:
        return None
    major, minor, patch, pre = match.groups()
    parts = None
    if pre is not None:
        # Numeric identifiers sort below alphanumeric ones, and numerically (semver 2.0 §11).
        parts = tuple((0, int(p)) if p.isdigit() else (1, p) for p in pre.split("."))
    return Version((int(major), int(minor or 0), int(patch or 0)), parts)


def compare(a: str, b: str) -> int | None:
    """-1, 0 or 1 as ``a`` is older, the same or newer than ``b``; None when they do not
    both parse and differ as text."""
    if a == b:
        return 0
    va, vb = parse(a), parse(b)
    if va is None or vb is None:
        return None
    ka, kb = va.key(), vb.key()
    return (ka > kb) - (ka < kb)


def check_pattern(pattern: str) -> str:
    """A ``from`` pattern: a version, or a version whose parts may be x or *."""
    text = pattern.strip()
    parts = text.lstrip("vV").split(".")
    wild = [i for i, p in enumerate(parts) if p in ("x", "X", "*")]
    if not wild:
        if parse(text) is None:
            raise ValueError(f"{pattern!r} is not a version pattern (write 5.0.x, 5.1.*, or a version)")
        return text
    # 5.x.1 would read as 5.x: a wildcard ends a pattern.
    if len(parts) > 3 or wild[0] != len(parts) - 1 or not all(_PART.match(p) for p in parts):
        raise ValueError(
            f"{pattern!r} is not a version pattern (write 5.0.x, 5.1.*, or a version; a wildcard is the last part)"
        )
    return text


def matches(version: str, pattern: str) -> bool:
    """Whether a reported version matches a ``from`` pattern: wildcards match any part
    (and the parts after them), the others compare as numbers; a pattern without
    wildcards matches the same version."""
    parts = pattern.lstrip("vV").split(".")
    if not any(p in ("x", "X", "*") for p in parts):
        return compare(version, pattern) == 0
    parsed = parse(version)
    if parsed is None:
        return False
    for have, want in zip(parsed.release, parts):
        if want in ("x", "X", "*"):
            return True
        if have != int(want):
            return False
    return True


def reported_text(reported_json: str | None) -> str | None:
    """The version a device reports, from its canonical JSON; None when it reports
    nothing, or something that is no version (an object, a list, null)."""
    if reported_json is None:
        return None
    try:
        value = json.loads(reported_json)
    except ValueError:
        return None
    if isinstance(value, bool) or value is None or isinstance(value, (dict, list)):
        return None
    return str(value)


def rule(
    reported: str | None, target: str, *, allow_downgrade: bool, from_: list[str] | None
) -> tuple[str, str | None]:
    """What an OTA campaign does with a device reporting ``reported``: ("deliver", None),
    ("installed", reason) when it already runs the target, or ("skipped", reason)."""
    if reported is not None and compare(reported, target) == 0:
        return "installed", f"already installed ({_shown(reported)})"
    if from_:
        if reported is None:
            return "skipped", f"reports no version; the campaign updates from {', '.join(from_)} only"
        if not any(matches(reported, p) for p in from_):
            return "skipped", f"reports {_shown(reported)}, not in from: {', '.join(from_)}"
    if reported is not None and not allow_downgrade and compare(reported, target) == 1:
        return "skipped", f"would be a downgrade ({_shown(reported)} → {target}); allow_downgrade is not set"
    return "deliver", None


def _shown(reported: str) -> str:
    """A version a device reported, for a reason: it may have sent 64 KiB."""
    return cut(reported, SHOWN)


def newest_before(target: str, versions: list[str]) -> str | None:
    """The newest of ``versions`` older than ``target`` (semantic comparison); None when
    none parses as older."""
    older = [v for v in versions if compare(v, target) == -1]
    if not older:
        return None
    return max(older, key=lambda v: parse(v).key())  # type: ignore[union-attr]
