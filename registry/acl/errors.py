"""The ACL errors a client sees, worded exactly as Consul words them (acl/errors.go, errors_ce.go).

``Permission denied: token with AccessorID '<id>' lacks permission 'service:write' on "web"`` for a
named resource; the same without ``on ...`` for unnamed ones (``operator:read``); the anonymous token
is called ``anonymous token`` with Consul's hint appended; ``ACL not found`` for an unknown token.
The name is wrapped in double quotes without escaping, as Consul's CE ``ResourceDescriptor.ToString``
does, and it is left out when empty, as Consul leaves it out.
"""

from __future__ import annotations

__all__ = [
    "ANONYMOUS_TOKEN_ID",
    "ACLError",
    "ACLNotFound",
    "ACLObjectError",
    "PermissionDenied",
]

ANONYMOUS_TOKEN_ID = "00000000-0000-0000-0000-000000000002"

_ANONYMOUS_HINT = ". The anonymous token is used implicitly when a request does not specify a token."


class ACLError(Exception):
    """Base of the ACL errors; ``str()`` is the body Consul sends with its 403."""


class ACLNotFound(ACLError):
    """The token's secret matches no token (Consul: ``ACL not found``, HTTP 403)."""

    def __init__(self) -> None:
        super().__init__("ACL not found")


class PermissionDenied(ACLError):
    """An authorization decision went against the token.

    ``resource`` and ``level`` are Consul's words (``service``/``write``); ``name`` is the resource's
    name or ``None`` for global permissions; ``cause`` replaces the whole explanation when the denial
    is not about a permission (Consul's ``PermissionDenied(msg)`` form).
    """

    def __init__(
        self,
        accessor_id: str = "",
        resource: str = "",
        level: str = "",
        name: str | None = None,
        *,
        cause: str = "",
    ) -> None:
        self.accessor_id = accessor_id
        self.resource = resource
        self.level = level
        self.name = name
        self.cause = cause
        super().__init__(self._message())

    @property
    def permission(self) -> str:
        return f"{self.resource}:{self.level}"

    def _message(self) -> str:
        if self.cause:
            return f"Permission denied: {self.cause}"
        if not self.resource:
            return "Permission denied"
        if self.accessor_id == ANONYMOUS_TOKEN_ID:
            who = "anonymous token"
        else:
            who = f"token with AccessorID '{self.accessor_id}'"
        text = f"Permission denied: {who} lacks permission '{self.resource}:{self.level}'"
        if self.name:
            text += f' on "{self.name}"'
        if self.accessor_id == ANONYMOUS_TOKEN_ID:
            text += _ANONYMOUS_HINT
        return text


class ACLObjectError(ValueError):
    """An ACL object (token, policy, role, auth method, binding rule) Consul would refuse to store, with
    Consul's message: an HTTP 400 where a request built it, a refused command where the log carried it."""
