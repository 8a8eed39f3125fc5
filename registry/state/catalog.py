"""The catalog tables: nodes, services and checks, with their secondary and per-name indexes.

Consul's catalog (agent/consul/state/catalog.go): a registration upserts the node, then the service,
then the checks, as one write; every row carries CreateIndex/ModifyIndex from the log. Each service name
and each node keeps the last index that touched it (or its health), so a blocking query on one service
wakes and reports a new index only when that service changed, as Consul's per-service index does.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

from registry import sessions as sess_rules
from registry.state.base import StoreBase, StoreError
from registry.state.topics import T_CHECKS, T_NODES, T_SERVICES, WatchSet
from registry.structs import CHECK_STATUSES, HEALTH_CRITICAL, Check, Node, Service


class CatalogTable(StoreBase):
    # ------------------------------------------------------------------ write helpers

    def _touch_service(self, name: str) -> None:
        tx = self._write()
        tx.put(self.service_index, name, tx.index)
        tx.topics.add(("svc", name))
        instances = self._instances
        if instances:
            instances.pop((name, False), None)
            instances.pop((name, True), None)

    def _touch_node(self, node: str) -> None:
        tx = self._write()
        tx.put(self.node_index, node, tx.index)
        tx.topics.add(("node", node))

    def _touch_all_services_of_node(self, node: str) -> None:
        for svc in self.services.get(node, {}).values():
            self._touch_service(svc.service)
            if (target := svc.connect_target) is not None:
                self._touch_service(target)

    # ------------------------------------------------------------------ writes

    def ensure_registration(
        self,
        node: Node,
        service: Service | None,
        checks: list[Check],
        skip_node_update: bool = False,
    ) -> None:
        """Catalog register: upsert the node, then the service, then the checks, as one write."""
        existing_node = self.nodes.get(node.node)
        # Validate everything first: a refused registration journals nothing to undo.
        for chk in checks:
            if chk.node != node.node:
                raise StoreError(f"Check node {chk.node!r} does not match registration node {node.node!r}")
            if chk.status not in CHECK_STATUSES:
                raise StoreError(f"Invalid check status: '{chk.status}'")
            if chk.service_id:
                known = service is not None and service.id == chk.service_id
                if not known and chk.service_id not in self.services.get(node.node, {}):
                    raise StoreError(f"Missing service registration for check {chk.check_id!r}")
        if service is not None and service.node != node.node:
            raise StoreError("Service node does not match registration node")

        if existing_node is None or not (skip_node_update or existing_node.same_as(node)):
            self._put_node(node, existing_node)
        if service is not None:
            self._put_service(service)
        for chk in checks:
            self._put_check(chk)

    def ensure_service(self, node: str, svc: Service) -> None:
        """One service instance on an existing node (Consul's ensureServiceTxn, as a transaction's Service
        ``set`` uses it): refused with Consul's "Missing node registration" when the node is unknown."""
        if node not in self.nodes:
            raise StoreError("Missing node registration")
        if svc.node != node:
            raise StoreError("Service node does not match registration node")
        self._put_service(svc)

    def ensure_check(self, chk: Check) -> None:
        """One check on an existing node (Consul's ensureCheckTxn, as a transaction's Check ``set`` uses it):
        an empty status is critical; the node, and the service when the check names one, must exist."""
        if not chk.status:
            chk = replace(chk, status=HEALTH_CRITICAL)
        if chk.node not in self.nodes:
            raise StoreError("Missing node registration")
        if chk.service_id and chk.service_id not in self.services.get(chk.node, {}):
            raise StoreError("Missing service registration")
        if chk.status not in CHECK_STATUSES:
            raise StoreError(f"Invalid check status: '{chk.status}'")
        self._put_check(chk)

    def _put_node(self, node: Node, existing: Node | None) -> None:
        tx = self._write()
        create = existing.create_index if existing else tx.index
        tx.put(self.nodes, node.node, replace(node, create_index=create, modify_index=tx.index))
        self._bump("nodes", T_NODES)
        self._touch_node(node.node)
        self._touch_all_services_of_node(node.node)

    def _put_service(self, svc: Service) -> None:
        tx = self._write()
        node_services = self.services.get(svc.node)
        if node_services is None:
            node_services = {}
            tx.put(self.services, svc.node, node_services)
        old = node_services.get(svc.id)
        if old is not None and old.same_as(svc):
            return
        row = replace(svc, create_index=old.create_index if old else tx.index, modify_index=tx.index)
        tx.put(node_services, svc.id, row)
        key = (svc.node, svc.id)
        if old is not None:
            self._unindex_service(old)
            self._touch_service(old.service)
            if (t := old.connect_target) is not None:
                self._touch_service(t)
        self._index_add(self.by_service_name, row.service, key)
        if (target := row.connect_target) is not None:
            self._index_add(self.connect_by_target, target, key)
            self._touch_service(target)
        self._touch_service(row.service)
        self._touch_node(svc.node)
        self._bump("services", T_SERVICES)
        # Service checks carry the service's name and tags: keep them in step.
        if old is not None and (old.service != row.service or old.tags != row.tags):
            node_checks = self.checks.get(svc.node, {})
            for cid, chk in list(node_checks.items()):
                if chk.service_id == svc.id:
                    tx.put(node_checks, cid, replace(
                        chk, service_name=row.service, service_tags=row.tags, modify_index=tx.index
                    ))  # fmt: skip
                    self._bump("checks", T_CHECKS)

    def _unindex_service(self, svc: Service) -> None:
        key = (svc.node, svc.id)
        self._index_discard(self.by_service_name, svc.service, key)
        if (target := svc.connect_target) is not None:
            self._index_discard(self.connect_by_target, target, key)

    def _put_check(self, chk: Check) -> None:
        tx = self._write()
        node_checks = self.checks.get(chk.node)
        if node_checks is None:
            node_checks = {}
            tx.put(self.checks, chk.node, node_checks)
        if chk.service_id:
            svc = self.services[chk.node][chk.service_id]
            chk = replace(chk, service_name=svc.service, service_tags=svc.tags)
        else:
            chk = replace(chk, service_name="", service_tags=())
        old = node_checks.get(chk.check_id)
        if old is not None and old.same_as(chk):
            return
        tx.put(node_checks, chk.check_id, replace(
            chk, create_index=old.create_index if old else tx.index, modify_index=tx.index
        ))  # fmt: skip
        self._bump("checks", T_CHECKS)
        if sess_rules.invalidated_by_check(chk.status):
            self._invalidate_check_sessions(chk.node, chk.check_id)
        self._touch_node(chk.node)
        for c in (old, chk):
            if c is None:
                continue
            if c.service_id:
                svc = self.services.get(chk.node, {}).get(c.service_id)
                if svc is not None:
                    self._touch_service(svc.service)
                    if (t := svc.connect_target) is not None:
                        self._touch_service(t)
            else:
                self._touch_all_services_of_node(chk.node)

    def update_check_status(self, node: str, check_id: str, status: str, output: str) -> None:
        """The agent's fast path for a check result: only Status and Output change."""
        if status not in CHECK_STATUSES:
            raise StoreError(f"Invalid check status: '{status}'")
        old = self.checks.get(node, {}).get(check_id)
        if old is None:
            raise StoreError(f"Unknown check ID \"{check_id}\" on node \"{node}\"")
        if old.status == status and old.output == output:
            return
        self._put_check(replace(old, status=status, output=output))

    def delete_node(self, node: str) -> None:
        if node not in self.nodes:
            return
        tx = self._write()
        for sid in sorted(self._sessions_by_node.get(node, ())):
            self.session_destroy(sid)
        self.coordinates_delete_node(node)
        self._touch_all_services_of_node(node)
        for svc in list(self.services.get(node, {}).values()):
            self._unindex_service(svc)
            self._bump("services", T_SERVICES)
        tx.pop(self.services, node)
        if tx.pop(self.checks, node):
            self._bump("checks", T_CHECKS)
        tx.pop(self.nodes, node)
        self._bump("nodes", T_NODES)
        self._touch_node(node)

    def delete_service(self, node: str, service_id: str) -> None:
        svc = self.services.get(node, {}).get(service_id)
        if svc is None:
            return
        tx = self._write()
        self._touch_service(svc.service)
        if (t := svc.connect_target) is not None:
            self._touch_service(t)
        self._unindex_service(svc)
        node_services = self.services[node]
        tx.pop(node_services, service_id)
        if not node_services:
            tx.pop(self.services, node)
        node_checks = self.checks.get(node, {})
        for cid in [cid for cid, c in node_checks.items() if c.service_id == service_id]:
            tx.pop(node_checks, cid)
            self._bump("checks", T_CHECKS)
            self._invalidate_check_sessions(node, cid)
        self._bump("services", T_SERVICES)
        self._touch_node(node)

    def delete_check(self, node: str, check_id: str) -> None:
        chk = self.checks.get(node, {}).get(check_id)
        if chk is None:
            return
        tx = self._write()
        if chk.service_id:
            svc = self.services.get(node, {}).get(chk.service_id)
            if svc is not None:
                self._touch_service(svc.service)
                if (t := svc.connect_target) is not None:
                    self._touch_service(t)
        else:
            self._touch_all_services_of_node(node)
        tx.pop(self.checks[node], check_id)
        self._bump("checks", T_CHECKS)
        self._touch_node(node)
        self._invalidate_check_sessions(node, check_id)

    # ------------------------------------------------------------------ reads
    #
    # A read given a watch set adds what it looked at, with the index Consul reports for it. Readers
    # that build their answer later (after deciding whether to block) may read only rows covered by the
    # topics they recorded: a service's instances and their checks by ("svc", name), a node's services
    # and checks by ("node", name), a whole table by its table topic.

    def node_table(self, ws: WatchSet) -> Mapping[str, Node]:
        """Every node (Consul's Nodes): the live map, watched as the node table."""
        ws.saw(T_NODES, self.table_index["nodes"])
        return self.nodes

    def service_table(self, ws: WatchSet) -> Mapping[str, set[tuple[str, str]]]:
        """Service name -> its (node, service ID) instances (Consul's Services): watched as the service
        table; the rows are in ``services``."""
        ws.saw(T_SERVICES, self.table_index["services"])
        return self.by_service_name

    def check_table(self, ws: WatchSet) -> Mapping[str, Mapping[str, Check]]:
        """Node -> check ID -> check (Consul's ChecksInState reads the whole table)."""
        ws.saw(T_CHECKS, self.table_index["checks"])
        return self.checks

    def service_instances(
        self, name: str, connect: bool = False, ws: WatchSet | None = None
    ) -> list[tuple[Node, Service]]:
        """Instances of a service (or, with connect, the instances that accept Connect traffic for it),
        in a stable order: node name, then service ID. Watched as ("svc", name), which also covers the
        instances' checks: every check write touches the services it affects."""
        if ws is not None:
            ws.saw(("svc", name), max(self.service_index.get(name, 0), 1))
        cached = self._instances.get((name, connect))
        if cached is None:
            keys = (self.connect_by_target if connect else self.by_service_name).get(name, ())
            nodes, services = self.nodes, self.services
            cached = tuple((nodes[node_name], services[node_name][sid]) for node_name, sid in sorted(keys))
            self._instances[(name, connect)] = cached
        return list(cached)

    def node_services(self, name: str, ws: WatchSet) -> tuple[Node | None, Mapping[str, Service]]:
        """One node and its services (Consul's NodeServices), watched as ("node", name)."""
        ws.saw(("node", name), max(self.node_index.get(name, 0), 1))
        return self.nodes.get(name), self.services.get(name, {})

    def checks_for_instance(self, node: str, service_id: str) -> list[Check]:
        """Node-level checks first, then the instance's own checks, each ordered by check ID."""
        node_checks = self.checks.get(node)
        if not node_checks:
            return []
        return sorted(
            (c for c in node_checks.values() if c.service_id in ("", service_id)),
            key=lambda c: (c.service_id != "", c.check_id),
        )

    def svc_index(self, name: str) -> int:
        return max(self.service_index.get(name, 0), 1)

    def nd_index(self, name: str) -> int:
        return max(self.node_index.get(name, 0), 1)

    def service_names(self) -> dict[str, list[str]]:
        out: dict[str, set[str]] = {}
        for name, keys in self.by_service_name.items():
            tags = out.setdefault(name, set())
            for node, sid in keys:
                tags.update(self.services[node][sid].tags)
        return {k: sorted(v) for k, v in sorted(out.items())}

    def checks_in_state(self, state: str) -> list[Check]:
        out = []
        for node in sorted(self.checks):
            for cid in sorted(self.checks[node]):
                c = self.checks[node][cid]
                if state == "any" or c.status == state:
                    out.append(c)
        return out

    def node_checks(self, node: str, ws: WatchSet | None = None) -> list[Check]:
        """One node's checks (Consul's NodeChecks), watched as ("node", name)."""
        if ws is not None:
            ws.saw(("node", node), max(self.node_index.get(node, 0), 1))
        return [self.checks[node][cid] for cid in sorted(self.checks.get(node, {}))]
