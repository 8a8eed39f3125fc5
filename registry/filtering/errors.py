"""The one exception compiling a filter raises, worded as Consul answers a bad ``?filter=``."""

from __future__ import annotations

__all__ = ["ERROR_PREFIX", "FilterError"]

# go-bexpr's CreateFilter wraps every error in this sentence, and Consul answers 400 with it.
ERROR_PREFIX = "Failed to create boolean expression evaluator: "


class FilterError(ValueError):
    """A filter that cannot be compiled; ``str()`` is the whole message Consul answers with."""

    def __init__(self, detail: str) -> None:
        super().__init__(ERROR_PREFIX + detail)
        self.detail = detail
