"""Domain errors. The CLI turns each into ``Error: <message>`` on stderr and its exit code."""

from __future__ import annotations


class CampaignctlError(Exception):
    """An error the user can act on; never a bug."""

    exit_code = 1

    def __init__(self, message: str, *, exit_code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if exit_code is not None:
            self.exit_code = exit_code


class NotFoundError(CampaignctlError):
    pass


class ConflictError(CampaignctlError):
    """The request contradicts the current state (already launched, already exists...)."""


class InputError(CampaignctlError):
    """Bad input: a manifest, a CSV file, a flag or a device payload.

    ``source`` is the file (or ``<command line>``), ``field`` a dotted path such as
    ``devices[3].tags``, ``line`` the 1-based line when the parser knows it.
    """

    def __init__(
        self,
        message: str,
        *,
        source: str | None = None,
        field: str | None = None,
        line: int | None = None,
    ) -> None:
        self.source, self.field, self.line, self.detail = source, field, line, message
        where = ":".join(p for p in (source, str(line) if line else None) if p)
        text = message
        if field:
            text = f"{field}: {text}"
        if where:
            text = f"{where}: {text}"
        super().__init__(text)
