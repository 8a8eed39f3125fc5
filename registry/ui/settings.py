"""Whether the agent serves the web UI, from Consul's config keys.

Consul turns the UI on with ``ui_config { enabled = true }``, the older top-level ``ui = true`` or the
``-ui`` flag, and ``-dev`` turns it on unless the configuration says otherwise (agent/config/builder.go,
``UIConfig.Enabled``; the dev defaults set it). ``ui_config.content_path`` moves the UI in Consul;
Proconsul serves it at ``/ui/`` only and refuses another path rather than ignore it.
"""

from __future__ import annotations

from typing import Any

from registry.config import Config, ConfigError

CONTENT_PATH = "/ui/"


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
    path = block.get("content_path")
    if path is not None and str(path).rstrip("/") + "/" != CONTENT_PATH:
        raise ConfigError(f"ui_config.content_path {path!r} is not supported: Proconsul serves the UI at "
                          f"{CONTENT_PATH} only; remove the key")  # fmt: skip
