"""The agent's local state: services and checks registered on this machine, and their sync status.

Local state is the source of truth for what runs here; the catalog is brought in line with it by
anti-entropy (``registry.agent.agent.Agent.sync_*``).
"""

from __future__ import annotations

from dataclasses import dataclass

from registry.agent.alias import AliasMonitor
from registry.agent.checks import Monitor, TTLMonitor
from registry.registration import CheckSpec, dur_str
from registry.structs import HEALTH_CRITICAL, Check, Service

# The check types whose Timeout Consul's HealthCheck carries.
TIMEOUT_TYPES = frozenset({"http", "tcp", "udp", "grpc", "h2ping", "os_service", "script"})


@dataclass
class LocalService:
    """A service registered on this agent, as its catalog row (validated when it was registered)."""

    service: Service

    @property
    def id(self) -> str:
        return self.service.id

    @property
    def name(self) -> str:
        return self.service.service


@dataclass
class LocalCheck:
    spec: CheckSpec
    status: str = HEALTH_CRITICAL
    output: str = ""
    critical_since: float | None = None
    last_synced: float = 0.0
    monitor: Monitor | TTLMonitor | AliasMonitor | None = None

    def row(self, node: str) -> Check:
        """The catalog row this check should have (as Consul's agent builds its HealthCheck)."""
        s = self.spec
        return Check(
            node=node,
            check_id=s.check_id,
            name=s.name or s.check_id,
            status=self.status or HEALTH_CRITICAL,
            notes=s.notes,
            output=self.output,
            service_id=s.service_id,
            type=s.type,
            interval=dur_str(s.interval),
            timeout=dur_str(s.timeout) if s.type in TIMEOUT_TYPES else "",
            definition=s.definition(),
        )
