"""The web front-end of ``campaignctl serve``, under ``/ui`` (see docs/web-ui.md)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fastapi import FastAPI
    from sqlalchemy.engine import Engine

    from campaignctl.api import Touches


def mount(app: "FastAPI", engine: "Engine", touch: "Touches", public_url: str | None = None) -> None:
    """Serve the front-end's pages from ``app``; ``touch`` records operators' last use
    (shared with the operator API); ``public_url``: see ``serve --public-url``."""
    from campaignctl.web.pages import router

    app.include_router(router(engine, touch, public_url))
