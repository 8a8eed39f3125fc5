"""``proconsul snapshot save|restore|inspect|decode`` (Consul's command/snapshot/*): ``save`` verifies what it
got before it replaces the file; ``inspect`` and ``decode`` read a file without an agent.

The file is Proconsul's own format, not Consul's (a Consul snapshot is a tar of Raft metadata and a stream of
msgpack records): gzip around a ``PROCONSUL-SNAPSHOT`` line, a version and CRC-32, and one msgpack map holding
the index, the time it was taken and every table of the state store. ``decode`` prints it as Consul's
``snapshot decode`` prints its own, line-delimited JSON objects ``{"Type": ..., "Data": ...}``: first the
``SnapshotHeader``, then one record per row, catalog and KV rows in the API's JSON shapes."""

from __future__ import annotations

import base64
import datetime
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from registry.cli.common import Client, CLIError, http_options, parser, run_client, subcommand, table


def cmd_snapshot(argv: list[str]) -> int:
    sub, rest = subcommand(argv, "snapshot", ("save", "restore", "inspect", "decode"), "[options] FILE")
    if sub == "decode":
        return _cmd_decode(rest)
    p = parser(f"proconsul snapshot {sub}", f"Snapshot {sub}")
    if sub != "inspect":
        http_options(p)
    p.add_argument("file")
    args = p.parse_args(rest)
    from registry.api.operator import decode_snapshot

    if sub == "inspect":
        try:
            data = decode_snapshot(Path(args.file).read_bytes())
        except (OSError, ValueError) as exc:
            raise CLIError(f"Error inspecting snapshot: {exc}") from exc
        store = data["store"]
        rows = [["ID", f"{data['index']}-{int(data['created'])}"], ["Size", str(Path(args.file).stat().st_size)],
                ["Index", str(data["index"])], ["Version", "1"], ["Nodes", str(len(store.get("nodes", [])))],
                ["Services", str(len(store.get("services", [])))], ["Checks", str(len(store.get("checks", [])))],
                ["KV", str(len(store.get("kv", [])))]]  # fmt: skip
        print(table(rows))
        return 0

    async def save(client: Client) -> int:
        status, raw, headers = await client.request("GET", "/v1/snapshot")
        if status >= 400:
            raise CLIError(f"Error saving snapshot: {raw.decode(errors='replace').strip()}")
        try:
            decode_snapshot(raw)
        except ValueError as exc:
            raise CLIError(f"Error verifying snapshot: {exc}") from exc
        tmp = Path(args.file + ".tmp")
        tmp.write_bytes(raw)
        tmp.replace(args.file)
        print(f"Saved and verified snapshot to index {headers.get('X-Consul-Index', '?')}")
        return 0

    async def restore(client: Client) -> int:
        try:
            blob = Path(args.file).read_bytes()
        except OSError as exc:
            raise CLIError(f"Error opening snapshot file: {exc.strerror}") from exc
        status, raw, _ = await client.request("PUT", "/v1/snapshot", body=blob)
        if status >= 400:
            raise CLIError(f"Error restoring snapshot: {raw.decode(errors='replace').strip()}")
        print("Restored snapshot")
        return 0

    return run_client(args, save if sub == "save" else restore)


DECODE_HELP = """Decodes a snapshot file (as saved by "proconsul snapshot save") and prints line-delimited JSON:

  {"Type": "SnapshotHeader", "Data": {"Index": ..., "Created": ..., "Format": ...}}
  {"Type": "<record type>", "Data": {...}}
  ...

Record types: Node, Service, Check, KVS, Tombstone, Session, ACLToken, ACLPolicy, ACLRole, ACLAuthMethod,
ACLBindingRule, and one per other table (intentions, config entries, Connect CA state) by its table name.
The file is Proconsul's snapshot format (gzip, a header line, a version and CRC-32, one msgpack map of the
state store's tables), not Consul's; the records are printed in the HTTP API's JSON shapes where there is one."""


def _cmd_decode(argv: list[str]) -> int:
    import argparse

    p = parser("proconsul snapshot decode", DECODE_HELP)
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("file", nargs="*")
    args = p.parse_args(argv)
    if not args.file:
        raise CLIError("Missing FILE argument")
    if len(args.file) > 1:
        raise CLIError(f"Too many arguments (expected 1, got {len(args.file)})")
    from registry.api.operator import decode_snapshot

    path = args.file[0]
    try:
        blob = Path(path).read_bytes()
    except OSError as exc:
        raise CLIError(f"Error opening snapshot file: open {path}: {(exc.strerror or str(exc)).lower()}") from exc
    try:
        data = decode_snapshot(blob)
        records = list(snapshot_records(data))
    except ValueError as exc:
        raise CLIError(f"Error reading snapshot: {exc}") from exc
    out = sys.stdout
    for record in records:
        out.write(json.dumps(record, default=_json_default, ensure_ascii=False) + "\n")
    return 0


def snapshot_records(data: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """A decoded snapshot as Consul-style decode records (header first); ValueError for a malformed store."""
    from registry.api import views
    from registry.state.codec import SnapshotFormatError
    from registry.state.store import StateStore

    raw = data["store"]
    try:
        store = StateStore.from_snapshot(raw)
    except (SnapshotFormatError, KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"snapshot store is malformed: {exc}") from exc
    created = datetime.datetime.fromtimestamp(float(data.get("created") or 0), datetime.UTC)
    yield {"Type": "SnapshotHeader", "Data": {
        "Index": int(data.get("index") or 0), "Created": created.isoformat().replace("+00:00", "Z"),
        "Format": "proconsul-snapshot", "Version": int(raw.get("v") or 0)}}  # fmt: skip
    for name in sorted(store.nodes):
        yield {"Type": "Node", "Data": views.node_json(store.nodes[name])}
    for node in sorted(store.services):
        for sid in sorted(store.services[node]):
            yield {"Type": "Service", "Data": {"Node": node, **views.service_json(store.services[node][sid])}}
    for node in sorted(store.checks):
        for cid in sorted(store.checks[node]):
            yield {"Type": "Check", "Data": views.check_json(store.checks[node][cid])}
    for key in sorted(store.kv):
        yield {"Type": "KVS", "Data": views.kv_json(store.kv[key])}
    for key, index in sorted((raw.get("tombstones") or {}).items()):
        yield {"Type": "Tombstone", "Data": {"Key": key, "Index": index}}
    for row in raw.get("sessions") or []:
        yield {"Type": "Session", "Data": {"Session": row[0], "CreateIndex": row[1], "ModifyIndex": row[2]}}
    acl = raw.get("acl") or {}
    for part, kind in (("tokens", "ACLToken"), ("policies", "ACLPolicy"), ("roles", "ACLRole"),
                       ("auth_methods", "ACLAuthMethod"), ("binding_rules", "ACLBindingRule")):  # fmt: skip
        for row in acl.get(part) or []:
            yield {"Type": kind, "Data": row}
    for name in sorted(raw.get("tables") or {}):
        rows = raw["tables"][name]
        for key in sorted(rows):
            yield {"Type": name, "Data": {"Key": key, "Value": rows[key]}}


def _json_default(value: object) -> object:
    if isinstance(value, bytes | bytearray):
        return base64.b64encode(value).decode()
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    raise TypeError(f"cannot encode {type(value).__name__}")
