"""Request bodies -> JSON values, with Consul's "Request decode failed" errors.

The schemas and checks of service and check definitions live in ``registry.registration`` (the HTTP API and
config files share them); this module only parses a body.
"""

from __future__ import annotations

import json
from typing import Any

from registry.registration import DecodeError

__all__ = ["DecodeError", "parse_json"]


def parse_json(body: bytes) -> Any:
    if not body.strip():
        return None
    try:
        return json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DecodeError(str(exc)) from exc
