"""Whether the agent serves the web UI, and where, from Consul's config keys.

Consul turns the UI on with ``ui_config { enabled = true }``, the older top-level ``ui = true`` or the
``-ui`` flag, and ``-dev`` turns it on unless the configuration says otherwise (agent/config/builder.go,
``UIConfig.Enabled``; the dev defaults set it).

``ui_config.content_path`` (the ``-ui-content-path`` flag, the older top-level ``ui_content_path``) moves
the UI: Consul trims the slashes off the value and puts one at each end (``console`` and ``/console``
both serve the UI at ``/console/``), redirects ``/`` there, and its UI builds every link under it. Its
documentation allows letters, digits, ``-`` and ``_`` in the path and forbids ``/v1/``, which would hide
the HTTP API; Proconsul checks both at start, with nested segments (``/ops/consul/``) allowed.
"""

from __future__ import annotations

import re
from typing import Any

from registry.config import Config, ConfigError

DEFAULT_CONTENT_PATH = "/ui/"
_SEGMENT = re.compile(r"[A-Za-z0-9_-]+")


def _block(cfg: Config) -> dict[str, Any]:
    block = cfg.extra.get("ui_config")
    return block if isinstance(block, dict) else {}


def ui_enabled(cfg: Config) -> bool:
    """``ui_config.enabled`` when given, else the legacy ``ui`` key, else on in ``-dev`` only."""
    block = _block(cfg)
    if "enabled" in block:
        return bool(block["enabled"])
    if "ui" in cfg.extra:
        return bool(cfg.extra["ui"])
    return cfg.dev


def normalize_content_path(raw: str, key: str = "ui_config.content_path") -> str:
    """``raw`` with one slash at each end ("" is the default ``/ui/``); ConfigError names ``key`` when the
    path is not one Consul accepts."""
    trimmed = raw.strip("/")
    if raw == "":
        return DEFAULT_CONTENT_PATH
    if trimmed == "":
        raise ConfigError(f"{key} {raw!r} would serve the UI at the root, over the HTTP API: give a path such "
                          "as \"/ui/\"")  # fmt: skip
    segments = trimmed.split("/")
    if not all(_SEGMENT.fullmatch(s) for s in segments):
        raise ConfigError(f"{key} {raw!r} is invalid: only letters, digits, '-' and '_' are allowed in the "
                          "path's segments (e.g. \"/consul-ui/\")")  # fmt: skip
    if segments[0] == "v1":
        raise ConfigError(f"{key} {raw!r} is not allowed: the UI would hide the HTTP API under /v1/")
    return "/" + trimmed + "/"


def _raw_content_path(cfg: Config) -> tuple[str, Any]:
    block = _block(cfg)
    if "content_path" in block:
        return "ui_config.content_path", block["content_path"]
    return "ui_content_path", cfg.extra.get("ui_content_path")


def content_path(cfg: Config) -> str:
    """Where the UI is served: ``ui_config.content_path`` when given, else the legacy ``ui_content_path``,
    else ``/ui/``; always with a slash at each end (``validate_ui`` has refused a bad value at start)."""
    key, raw = _raw_content_path(cfg)
    return DEFAULT_CONTENT_PATH if raw is None else normalize_content_path(str(raw), key)


def validate_ui(cfg: Config) -> None:
    """Refuse UI keys Proconsul cannot honour (ConfigError with the key named)."""
    raw = cfg.extra.get("ui_config")
    if raw is not None and not isinstance(raw, dict):
        raise ConfigError("ui_config must be a map, e.g. {enabled = true}")
    block = _block(cfg)
    if "enabled" in block and not isinstance(block["enabled"], bool):
        raise ConfigError(f"ui_config.enabled must be true or false, got {block['enabled']!r}")
    if "ui" in cfg.extra and not isinstance(cfg.extra["ui"], bool):
        raise ConfigError(f"ui must be true or false, got {cfg.extra['ui']!r}")
    key, path = _raw_content_path(cfg)
    if path is not None:
        if not isinstance(path, str):
            raise ConfigError(f"{key} must be a string such as \"/ui/\", got {path!r}")
        normalize_content_path(path, key)
