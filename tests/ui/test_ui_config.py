"""When the agent serves the UI: Consul's ui_config.enabled, the legacy ui key, -ui, and -dev's default."""

from __future__ import annotations

from pathlib import Path

import pytest

from registry.cli.agent import build_config
from registry.config import ConfigError
from registry.testing import GOSSIP_KEY
from registry.ui.settings import ui_enabled


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
    ('ui_config { content_path = "/console/" }', "ui_config.content_path '/console/' is not supported"),
])  # fmt: skip
def test_keys_it_cannot_honour_are_refused(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        _cfg(tmp_path, text)
