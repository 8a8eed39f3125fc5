"""Rows of the state store, as immutable values.

Field names follow Consul's structs so that the JSON views in ``registry.api.views`` are a direct mapping.
Rows are replaced, never mutated: a read that handed a row to a response can never see it change.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

HEALTH_PASSING = "passing"
HEALTH_WARNING = "warning"
HEALTH_CRITICAL = "critical"
HEALTH_MAINT = "maintenance"
CHECK_STATUSES = (HEALTH_PASSING, HEALTH_WARNING, HEALTH_CRITICAL)


def aggregate_status(statuses: Iterable[str]) -> str:
    """The health of an instance from its checks' statuses, as Consul aggregates them (api.HealthChecks
    AggregatedStatus for the agent's /v1/agent/health/service endpoints, and the DNS interface's
    instance filter): any critical makes it critical, else anything not passing makes it warning, else
    (no checks included) it is passing. Stops at the first critical."""
    status = HEALTH_PASSING
    for s in statuses:
        if s == HEALTH_CRITICAL:
            return HEALTH_CRITICAL
        if s != HEALTH_PASSING:
            status = HEALTH_WARNING
    return status


SERF_CHECK_ID = "serfHealth"
SERF_CHECK_NAME = "Serf Health Status"
NODE_MAINT_CHECK_ID = "_node_maintenance"
SERVICE_MAINT_PREFIX = "_service_maintenance:"
CONSUL_SERVICE = "consul"


@dataclass(frozen=True, slots=True)
class Node:
    id: str
    node: str
    address: str
    datacenter: str
    tagged_addresses: dict[str, str] = field(default_factory=dict)
    meta: dict[str, str] = field(default_factory=dict)
    create_index: int = 0
    modify_index: int = 0

    def same_as(self, other: Node) -> bool:
        return (
            self.id == other.id
            and self.address == other.address
            and self.datacenter == other.datacenter
            and self.tagged_addresses == other.tagged_addresses
            and self.meta == other.meta
        )


@dataclass(frozen=True, slots=True)
class Service:
    node: str
    id: str
    service: str
    kind: str = ""
    tags: tuple[str, ...] = ()
    address: str = ""
    tagged_addresses: dict[str, dict[str, Any]] = field(default_factory=dict)
    meta: dict[str, str] = field(default_factory=dict)
    port: int = 0
    weights: tuple[int, int] = (1, 1)  # (Passing, Warning)
    enable_tag_override: bool = False
    proxy: dict[str, Any] | None = None
    connect: dict[str, Any] | None = None
    create_index: int = 0
    modify_index: int = 0
    locality: dict[str, str] | None = None  # Consul's Locality: {"Region": ..., "Zone": ...}, None when unset

    def same_as(self, other: Service) -> bool:
        return (
            self.service == other.service
            and self.kind == other.kind
            and self.tags == other.tags
            and self.address == other.address
            and self.tagged_addresses == other.tagged_addresses
            and self.meta == other.meta
            and self.port == other.port
            and self.weights == other.weights
            and self.enable_tag_override == other.enable_tag_override
            and self.proxy == other.proxy
            and self.connect == other.connect
            and self.locality == other.locality
        )

    @property
    def connect_target(self) -> str | None:
        """The service this instance accepts Connect traffic for (sidecar destination or native), else None."""
        if self.kind == "connect-proxy" and self.proxy:
            dest = self.proxy.get("DestinationServiceName")
            return dest if isinstance(dest, str) and dest else None
        if self.connect and self.connect.get("Native"):
            return self.service
        return None


@dataclass(frozen=True, slots=True)
class Check:
    node: str
    check_id: str
    name: str
    status: str = HEALTH_CRITICAL
    notes: str = ""
    output: str = ""
    service_id: str = ""
    service_name: str = ""
    service_tags: tuple[str, ...] = ()
    type: str = ""
    interval: str = ""
    timeout: str = ""
    definition: dict[str, Any] = field(default_factory=dict)
    create_index: int = 0
    modify_index: int = 0

    def same_as(self, other: Check) -> bool:
        return (
            self.name == other.name
            and self.status == other.status
            and self.notes == other.notes
            and self.output == other.output
            and self.service_id == other.service_id
            and self.service_name == other.service_name
            and self.service_tags == other.service_tags
            and self.type == other.type
            and self.interval == other.interval
            and self.timeout == other.timeout
            and self.definition == other.definition
        )


@dataclass(frozen=True, slots=True)
class KVEntry:
    key: str
    value: bytes | None
    flags: int = 0
    # Sessions and locks land later; the row already carries what they need so the table does not change.
    session: str = ""
    lock_index: int = 0
    create_index: int = 0
    modify_index: int = 0
