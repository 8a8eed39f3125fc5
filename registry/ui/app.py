"""Builds the UI: the pages of ``registry.ui.views`` on a ``UI`` talking to the agent at ``address``."""

from __future__ import annotations

from registry.client.http import AgentHTTP, HTTPConfig
from registry.ui import views
from registry.ui.pages import UI
from registry.ui.settings import DEFAULT_CONTENT_PATH


def build_ui(address: str, *, wait_seconds: int = 20, content_path: str = DEFAULT_CONTENT_PATH) -> UI:
    """The UI for the agent whose HTTP API is at ``address`` (``http://host:port``: the agent's own), served
    under ``content_path`` (``registry.ui.settings.content_path``: ``/ui/`` unless configured)."""
    # No total timeout on the session: each call sets its own (a blocking query's allows for its wait).
    ui = UI(AgentHTTP(HTTPConfig(address=address), total=None, connect=5.0), wait_seconds=wait_seconds,
            base=content_path)  # fmt: skip
    views.register(ui)
    return ui
