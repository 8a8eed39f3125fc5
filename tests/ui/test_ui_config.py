"""When and where the agent serves the UI: Consul's ui_config.enabled, the legacy ui key, -ui, -dev's default, and
ui_config.content_path (-ui-content-path, the legacy ui_content_path)."""

from __future__ import annotations

from pathlib import Path

import pytest

from registry.cli.agent import build_config
from registry.config import ConfigError
from registry.testing import GOSSIP_KEY
from registry.ui.settings import content_path, ui_enabled


def _cfg(tmp_path: Path, text: str, *flags: str):  # type: ignore[no-untyped-def]
    path = tmp_path / "ui.hcl"
    path.write_text(text)
    # A client agent outside -dev needs a gossip key (registry.posture); the UI settings do not depend on it.
    return build_config(["-data-dir", str(tmp_path), "-config-file", str(path), "-encrypt", GOSSIP_KEY, *flags])


def test_off_by_default_on_in_dev_and_with_the_flag_or_either_key(tmp_path: Path) -> None:
    assert not ui_enabled(_cfg(tmp_path, ""))
    assert ui_enabled(_cfg(tmp_path, "", "-dev"))
    assert not ui_enabled(_cfg(tmp_path, "ui_config { enabled = false }", "-dev"))
    assert ui_enabled(_cfg(tmp_path, "", "-ui"))
    assert ui_enabled(_cfg(tmp_path, 'ui_config { enabled = true \n dir = "/x" }'))
    cfg = _cfg(tmp_path, 'ui_config { dir = "/x" }', "-ui")
    assert ui_enabled(cfg) and cfg.extra["ui_config"]["dir"] == "/x"  # the flag keeps the file's block
    assert ui_enabled(_cfg(tmp_path, "ui = true"))
    assert not any("ui" in k for k in _cfg(tmp_path, "ui_config { enabled = true }").unknown_keys)


@pytest.mark.parametrize(("text", "message"), [
    ('ui_config { enabled = "yes" }', "ui_config.enabled must be true or false"),
    ('ui_config { content_path = "/v1/" }', "the UI would hide the HTTP API under /v1/"),
    ('ui_config { content_path = "/" }', "would serve the UI at the root"),
    ('ui_config { content_path = "/my ui/" }', "only letters, digits, '-' and '_'"),
    ('ui_content_path = "v1"', "ui_content_path 'v1' is not allowed"),
])  # fmt: skip
def test_keys_it_cannot_honour_are_refused(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        _cfg(tmp_path, text)


def test_the_content_path_from_the_key_the_flag_or_the_legacy_key_with_a_slash_at_each_end(tmp_path: Path) -> None:
    assert content_path(_cfg(tmp_path, "")) == "/ui/"
    assert content_path(_cfg(tmp_path, 'ui_config { content_path = "console" }')) == "/console/"
    assert content_path(_cfg(tmp_path, "", "-ui-content-path", "/ops/consul")) == "/ops/consul/"
    assert content_path(_cfg(tmp_path, 'ui_content_path = "/legacy/"')) == "/legacy/"
    both = 'ui_content_path = "/legacy/"\nui_config { content_path = "/new/" }'
    assert content_path(_cfg(tmp_path, both)) == "/new/"  # ui_config wins, as in Consul
    assert not any("ui" in k for k in _cfg(tmp_path, 'ui_content_path = "/x/"').unknown_keys)
