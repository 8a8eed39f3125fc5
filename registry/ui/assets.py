"""The UI's static files (htmx, the style sheet, the reconnect script), served with their version in the URL.

Each file is read once at start and served at ``/ui/assets/<digest>/<name>``, where ``<digest>`` is the
first 12 hex digits of the SHA-256 of its bytes (under the UI's content path: ``/ui/`` unless
``ui_config.content_path`` moves it): a page names the exact bytes it was rendered with, so the
answer can be cached for a year (``immutable``) and a new release is fetched at once, with no build step
and nothing fetched from outside (the agent works offline). htmx is the released file from its npm package,
vendored with its version in its name and its licence beside it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

STATIC = Path(__file__).resolve().parent / "static"
HTMX = "htmx-2.0.11.min.js"
LONG_CACHE = "public, max-age=31536000, immutable"
_TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8",
          ".LICENSE": "text/plain; charset=utf-8"}  # fmt: skip


@dataclass(frozen=True, slots=True)
class Asset:
    name: str
    digest: str
    body: bytes
    content_type: str


class Assets:
    """The files of ``directory``, by name; ``url(name)`` for templates, ``find(path)`` for the server."""

    def __init__(self, prefix: str = "/ui/assets/", directory: Path = STATIC) -> None:
        self.prefix = prefix
        self.by_name: dict[str, Asset] = {}
        for path in sorted(directory.iterdir()):
            if not path.is_file() or path.suffix not in _TYPES:
                continue
            body = path.read_bytes()
            digest = hashlib.sha256(body).hexdigest()[:12]
            self.by_name[path.name] = Asset(path.name, digest, body, _TYPES[path.suffix])

    def url(self, name: str) -> str:
        asset = self.by_name[name]
        return f"{self.prefix}{asset.digest}/{asset.name}"

    def find(self, path: str) -> Asset | None:
        """The asset a URL names, only at the digest of the bytes served now (an old digest is a 404: a
        cached page from an older release must not get new bytes under an immutable URL)."""
        digest, _, name = path.removeprefix(self.prefix).partition("/")
        asset = self.by_name.get(name)
        return asset if asset is not None and asset.digest == digest else None
