"""The agent's local state: services and checks registered on this machine, and their sync status.

Local state is the source of truth for what runs here; the catalog is brought in line with it by
anti-entropy (``registry.agent.agent.Agent.sync_*``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from registry.agent.checks import CheckSpec
from registry.structs import HEALTH_CRITICAL


@dataclass
class LocalService:
    """A service registration in catalog-command shape (ID, Service, Tags, Address, ...)."""

    definition: dict[str, Any]

    @property
    def id(self) -> str:
        return str(self.definition["ID"])

    @property
    def name(self) -> str:
        return str(self.definition["Service"])


@dataclass
class LocalCheck:
    spec: CheckSpec
    status: str = HEALTH_CRITICAL
    output: str = ""
    critical_since: float | None = None
    last_synced: float = 0.0
    monitor: Any = None
    handler: Any = None
    extra: dict[str, Any] = field(default_factory=dict)

    def command_dict(self, node: str) -> dict[str, Any]:
        from registry.api.decode import dur_str

        s = self.spec
        return {
            "Node": node,
            "CheckID": s.check_id,
            "Name": s.name,
            "Status": self.status,
            "Notes": s.notes,
            "Output": self.output,
            "ServiceID": s.service_id,
            "Type": s.type,
            "Interval": dur_str(s.interval),
            "Timeout": dur_str(s.timeout) if s.type in ("http", "tcp", "script") else "",
            "Definition": s.definition(),
        }
