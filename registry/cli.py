"""The ``proconsul`` command: Consul's verbs and flags (``-flag`` and ``--flag`` both work)."""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import signal
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from registry import __version__

DEFAULT_HTTP_ADDR = "http://127.0.0.1:8500"


class CLIError(Exception):
    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def _opt(p: argparse.ArgumentParser, name: str, **kw: Any) -> None:
    p.add_argument(f"-{name}", f"--{name}", dest=name.replace("-", "_"), **kw)


def _parser(prog: str, description: str) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(prog=prog, description=description, allow_abbrev=False)


def _http_options(p: argparse.ArgumentParser) -> None:
    _opt(p, "http-addr", default=None, help="agent HTTP address (env CONSUL_HTTP_ADDR / PROCONSUL_HTTP_ADDR)")
    _opt(p, "token", default=None, help="ACL token (env CONSUL_HTTP_TOKEN)")
    _opt(p, "datacenter", default=None)
    _opt(p, "stale", action="store_true")


# ---------------------------------------------------------------------- HTTP client for client commands


class Client:
    def __init__(self, args: argparse.Namespace) -> None:
        addr = (
            args.http_addr
            or os.environ.get("PROCONSUL_HTTP_ADDR")
            or os.environ.get("CONSUL_HTTP_ADDR")
            or DEFAULT_HTTP_ADDR
        )
        if "://" not in addr:
            scheme = "https" if os.environ.get("CONSUL_HTTP_SSL", "").lower() in ("1", "true") else "http"
            addr = f"{scheme}://{addr}"
        self.base = addr.rstrip("/")
        self.token = args.token or os.environ.get("CONSUL_HTTP_TOKEN") or ""
        self.dc = args.datacenter
        self.stale = args.stale

    def request(
        self, method: str, path: str, params: dict[str, Any] | None = None, body: bytes | None = None
    ) -> tuple[int, bytes, dict[str, str]]:
        params = {k: v for k, v in (params or {}).items() if v is not None}
        if self.dc:
            params.setdefault("dc", self.dc)
        if self.stale and method == "GET":
            params.setdefault("stale", "")
        qs = urllib.parse.urlencode(params)
        url = f"{self.base}{path}" + (f"?{qs}" if qs else "")
        req = urllib.request.Request(url, data=body, method=method)
        if self.token:
            req.add_header("X-Consul-Token", self.token)
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return resp.status, resp.read(), dict(resp.headers)
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read(), dict(exc.headers)
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise CLIError(
                f"Error connecting to Proconsul agent at {self.base}: {reason}\n"
                "Is the agent running? Set -http-addr or CONSUL_HTTP_ADDR to point at it."
            ) from exc

    def json(self, method: str, path: str, params: dict[str, Any] | None = None, body: Any = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        status, raw, _ = self.request(method, path, params, data)
        if status >= 400:
            raise CLIError(f"Unexpected response code: {status} ({raw.decode(errors='replace').strip()})")
        return json.loads(raw) if raw.strip() else None


def _subcommand(argv: list[str], group: str, choices: tuple[str, ...], usage: str) -> tuple[str, list[str]]:
    """Split ``proconsul <group> <sub> ...``; an unknown or missing sub-command prints the usage (exit 1)."""
    if not argv or argv[0] not in choices:
        raise CLIError(f"Usage: proconsul {group} <{'|'.join(choices)}> {usage}")
    return argv[0], argv[1:]


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)


# ---------------------------------------------------------------------- commands


def cmd_version(argv: list[str]) -> int:
    from registry import CONSUL_VERSION

    print(f"Proconsul v{__version__}")
    print(f"Consul API compatibility: v{CONSUL_VERSION}")
    print("Protocol 2 spoken by default, understands 2 to 3")
    return 0


def cmd_members(argv: list[str]) -> int:
    p = _parser("proconsul members", "Lists the members of the cluster")
    _http_options(p)
    _opt(p, "detailed", action="store_true")
    _opt(p, "status", default=None, help="regex filter on member status")
    _opt(p, "wan", action="store_true")
    args = p.parse_args(argv)
    members = Client(args).json("GET", "/v1/agent/members")
    names = {0: "none", 1: "alive", 2: "leaving", 3: "left", 4: "failed"}
    rows = [["Node", "Address", "Status", "Type", "Build", "Protocol", "DC", "Partition", "Segment"]]
    import re

    for m in sorted(members, key=lambda m: m["Name"]):
        tags = m.get("Tags", {})
        status = names.get(m.get("Status", 0), "unknown")
        if args.status and not re.search(args.status, status):
            continue
        server = tags.get("role") == "consul"
        rows.append([
            m["Name"], f"{m['Addr']}:{m['Port']}", status, "server" if server else "client",
            tags.get("build", "").split(":")[0], tags.get("vsn", "2"), tags.get("dc", ""), "default",
            "<all>" if server else "<default>",
        ])  # fmt: skip
    print(_table(rows))
    return 0


def cmd_catalog(argv: list[str]) -> int:
    sub, rest = _subcommand(argv, "catalog", ("services", "nodes", "datacenters"), "[options]")
    p = _parser(f"proconsul catalog {sub}", f"Lists the catalog's {sub}")
    _http_options(p)
    if sub == "services":
        _opt(p, "tags", action="store_true")
        _opt(p, "node", default=None)
        _opt(p, "node-meta", action="append", default=[])
    elif sub == "nodes":
        _opt(p, "service", default=None)
        _opt(p, "detailed", action="store_true")
        _opt(p, "node-meta", action="append", default=[])
    args = p.parse_args(rest)
    client = Client(args)
    if sub == "datacenters":
        for dc in client.json("GET", "/v1/catalog/datacenters"):
            print(dc)
        return 0
    if sub == "services":
        if args.node:
            data = client.json("GET", f"/v1/catalog/node/{urllib.parse.quote(args.node)}")
            if data is None:
                raise CLIError(f"Error listing services for node: No node named {args.node!r}")
            services: dict[str, list[str]] = {}
            for s in data["Services"].values():
                services.setdefault(s["Service"], []).extend(s.get("Tags") or [])
        else:
            services = client.json("GET", "/v1/catalog/services", {"node-meta": args.node_meta or None})
        if not services:
            print("No services match the given query - try expanding your search.", file=sys.stderr)
            return 0
        if args.tags:
            print(_table([[name, ",".join(sorted(set(tags)))] for name, tags in sorted(services.items())]))
        else:
            for name in sorted(services):
                print(name)
        return 0
    if args.service:
        entries = client.json("GET", f"/v1/catalog/service/{urllib.parse.quote(args.service)}")
        nodes = [{"Node": e["Node"], "ID": e["ID"], "Address": e["Address"], "Datacenter": e["Datacenter"],
                  "TaggedAddresses": e["TaggedAddresses"], "Meta": e["NodeMeta"]} for e in entries]  # fmt: skip
    else:
        nodes = client.json("GET", "/v1/catalog/nodes")
    if not nodes:
        print("No nodes match the given query - try expanding your search.", file=sys.stderr)
        return 0
    rows = [["Node", "ID", "Address", "DC"]]
    for n in nodes:
        rows.append([n["Node"], n["ID"] if args.detailed else n["ID"][:8], n["Address"], n["Datacenter"]])
    print(_table(rows))
    return 0


def _load_definition(path: str) -> Any:
    from registry.config import ConfigError, load_file

    try:
        return load_file(path)
    except ConfigError as exc:
        raise CLIError(str(exc)) from exc


def cmd_services(argv: list[str]) -> int:
    sub, rest = _subcommand(argv, "services", ("register", "deregister"), "[options] [FILE...]")
    p = _parser(f"proconsul services {sub}", f"{sub.title()} services with the local agent")
    _http_options(p)
    _opt(p, "id", default=None)
    if sub == "register":
        _opt(p, "name", default=None)
        _opt(p, "address", default=None)
        _opt(p, "port", type=int, default=None)
        _opt(p, "tag", action="append", default=[])
        _opt(p, "meta", action="append", default=[])
    p.add_argument("files", nargs="*")
    args = p.parse_args(rest)
    client = Client(args)
    defs: list[dict[str, Any]] = []
    for f in args.files:
        data = _load_definition(f)
        if "services" in data:
            defs.extend(data["services"])
        elif "service" in data:
            defs.append(data["service"])
        else:
            defs.append(data)
    if sub == "register":
        if args.name:
            d: dict[str, Any] = {"Name": args.name}
            if args.id:
                d["ID"] = args.id
            if args.address:
                d["Address"] = args.address
            if args.port is not None:
                d["Port"] = args.port
            if args.tag:
                d["Tags"] = args.tag
            if args.meta:
                d["Meta"] = dict(m.split("=", 1) for m in args.meta)
            defs.append(d)
        if not defs:
            raise CLIError("No services to register: give -name or a service definition file")
        for d in defs:
            status, raw, _ = client.request("PUT", "/v1/agent/service/register", body=json.dumps(d).encode())
            if status >= 400:
                raise CLIError(f"Error registering service {d.get('Name') or d.get('name')!r}: {raw.decode().strip()}")
            print(f"Registered service: {d.get('Name') or d.get('name')}")
        return 0
    ids = [args.id] if args.id else [d.get("ID") or d.get("id") or d.get("Name") or d.get("name") for d in defs]
    if not ids:
        raise CLIError("No services to deregister: give -id or a service definition file")
    for sid in ids:
        status, raw, _ = client.request("PUT", f"/v1/agent/service/deregister/{urllib.parse.quote(sid, safe='')}")
        if status >= 400:
            raise CLIError(f"Error deregistering service {sid!r}: {raw.decode().strip()}")
        print(f"Deregistered service: {sid}")
    return 0


def cmd_kv(argv: list[str]) -> int:
    sub, rest = _subcommand(argv, "kv", ("get", "put", "delete"), "[options] KEY [DATA]")
    p = _parser(f"proconsul kv {sub}", f"KV {sub}")
    _http_options(p)
    if sub == "get":
        _opt(p, "recurse", action="store_true")
        _opt(p, "keys", action="store_true")
        _opt(p, "separator", default="/")
        _opt(p, "detailed", action="store_true")
        _opt(p, "base64", action="store_true")
    elif sub == "put":
        _opt(p, "flags", type=int, default=None)
        _opt(p, "cas", action="store_true")
        _opt(p, "modify-index", type=int, default=None)
        _opt(p, "base64", action="store_true")
        _opt(p, "session", default="")
        _opt(p, "acquire", action="store_true")
        _opt(p, "release", action="store_true")
    else:
        _opt(p, "recurse", action="store_true")
        _opt(p, "cas", action="store_true")
        _opt(p, "modify-index", type=int, default=None)
    p.add_argument("key", nargs="?", default="")
    if sub == "put":
        p.add_argument("data", nargs="?", default=None)
    args = p.parse_args(rest)
    client = Client(args)
    key = args.key
    path = "/v1/kv/" + urllib.parse.quote(key)
    if sub == "get":
        return _kv_get(client, args, key, path)
    if sub == "put":
        if not key:
            raise CLIError("Error! Missing KEY argument")
        data = args.data
        if data is None:
            value = b""
        elif data == "-":
            value = sys.stdin.buffer.read()
        elif data.startswith("@"):
            try:
                value = Path(data[1:]).read_bytes()
            except OSError as exc:
                raise CLIError(f"Error! Failed to read file {data[1:]}: {exc.strerror}") from exc
        else:
            value = data.encode()
        if args.base64:
            try:
                value = base64.b64decode(value, validate=True)
            except ValueError as exc:
                raise CLIError(f"Error! Cannot base 64 decode data: {exc}") from exc
        params: dict[str, Any] = {"flags": args.flags}
        if (args.acquire or args.release) and not args.session:
            raise CLIError("Error! Missing -session (required with -acquire and -release)")
        if args.cas:
            if args.modify_index is None:
                raise CLIError("Must specify -modify-index with -cas!")
            params["cas"] = args.modify_index
        elif args.acquire or args.release:
            verb = "acquire" if args.acquire else "release"
            params[verb] = args.session
            status, raw, _ = client.request("PUT", path, params, value)
            if status >= 400:
                raise CLIError(f"Error! Failed writing data: {raw.decode(errors='replace').strip()}")
            if raw.strip() != b"true":
                raise CLIError("Error! Did not acquire lock" if args.acquire else "Error! Did not release lock")
            print(f"Success! Lock acquired on: {key}" if args.acquire else f"Success! Lock released on: {key}")
            return 0
        status, raw, _ = client.request("PUT", path, params, value)
        if status >= 400:
            raise CLIError(f"Error! Failed writing data: {raw.decode(errors='replace').strip()}")
        if raw.strip() != b"true":
            raise CLIError(f"Error! Did not write to {key}: CAS failed")
        print(f"Success! Data written to: {key}")
        return 0
    # delete
    if not key and not args.recurse:
        raise CLIError("Error! Missing KEY argument")
    params = {}
    if args.recurse:
        if args.cas:
            raise CLIError("Cannot specify both -cas and -recurse!")
        params["recurse"] = ""
    if args.cas:
        if args.modify_index is None:
            raise CLIError("Must specify -modify-index with -cas!")
        params["cas"] = args.modify_index
    status, raw, _ = client.request("DELETE", path, params)
    if status >= 400:
        raise CLIError(f"Error! Failed deleting key: {raw.decode(errors='replace').strip()}")
    if raw.strip() != b"true":
        raise CLIError(f"Error! Did not delete key {key}: CAS failed")
    print(f"Success! Deleted keys with prefix: {key}" if args.recurse else f"Success! Deleted key: {key}")
    return 0


def _kv_get(client: Client, args: argparse.Namespace, key: str, path: str) -> int:
    if args.keys:
        status, raw, _ = client.request("GET", path, {"keys": "", "separator": args.separator})
        if status == 404:
            return 0
        if status >= 400:
            raise CLIError(f"Error querying Consul agent: {raw.decode().strip()}")
        for k in json.loads(raw):
            print(k)
        return 0
    if args.recurse:
        status, raw, _ = client.request("GET", path, {"recurse": ""})
        if status == 404:
            return 0
        if status >= 400:
            raise CLIError(f"Error querying Consul agent: {raw.decode().strip()}")
        for e in json.loads(raw):
            print(f"{e['Key']}:{_value_text(e, args.base64)}")
        return 0
    if not key:
        raise CLIError("Error! Missing KEY argument")
    status, raw, _ = client.request("GET", path)
    if status == 404:
        raise CLIError(f"Error! No key exists at: {key}")
    if status >= 400:
        raise CLIError(f"Error querying Consul agent: {raw.decode().strip()}")
    entry = json.loads(raw)[0]
    if args.detailed:
        rows = [
            ["CreateIndex", str(entry["CreateIndex"])], ["Flags", str(entry["Flags"])], ["Key", entry["Key"]],
            ["LockIndex", str(entry["LockIndex"])], ["ModifyIndex", str(entry["ModifyIndex"])],
            ["Session", entry.get("Session") or "-"], ["Value", _value_text(entry, args.base64)],
        ]  # fmt: skip
        print(_table(rows))
        return 0
    value = base64.b64decode(entry["Value"]) if entry.get("Value") else b""
    if args.base64:
        print(base64.b64encode(value).decode())
    else:
        sys.stdout.buffer.write(value + b"\n")
        sys.stdout.flush()
    return 0


def _value_text(entry: dict[str, Any], b64: bool) -> str:
    if not entry.get("Value"):
        return ""
    if b64:
        return str(entry["Value"])
    return base64.b64decode(entry["Value"]).decode("utf-8", "replace")


def cmd_leave(argv: list[str]) -> int:
    p = _parser("proconsul leave", "Gracefully leave the cluster and shut down the agent")
    _http_options(p)
    args = p.parse_args(argv)
    status, raw, _ = Client(args).request("PUT", "/v1/agent/leave")
    if status >= 400:
        raise CLIError(f"Error leaving: {raw.decode().strip()}")
    print("Graceful leave complete")
    return 0


def cmd_reload(argv: list[str]) -> int:
    p = _parser("proconsul reload", "Reload the agent's configuration")
    _http_options(p)
    args = p.parse_args(argv)
    status, raw, _ = Client(args).request("PUT", "/v1/agent/reload")
    if status >= 400:
        raise CLIError(f"Error reloading: {raw.decode().strip()}")
    print("Configuration reload triggered")
    return 0


def cmd_operator(argv: list[str]) -> int:
    if len(argv) < 2 or argv[0] != "raft" or argv[1] not in ("list-peers", "remove-peer", "transfer-leader"):
        print("Usage: proconsul operator raft <list-peers|remove-peer|transfer-leader> [options]", file=sys.stderr)
        return 1
    sub, rest = argv[1], argv[2:]
    p = _parser(f"proconsul operator raft {sub}", "Raft operator commands")
    _http_options(p)
    _opt(p, "id", default=None)
    _opt(p, "address", default=None)
    args = p.parse_args(rest)
    client = Client(args)
    if sub == "list-peers":
        conf = client.json("GET", "/v1/operator/raft/configuration")
        rows = [["Node", "ID", "Address", "State", "Voter", "RaftProtocol", "Commit Index"]]
        for s in conf["Servers"]:
            rows.append([s["Node"], s["ID"], s["Address"], "leader" if s["Leader"] else "follower",
                         str(s["Voter"]).lower(), s["ProtocolVersion"], str(s.get("LastIndex", ""))])  # fmt: skip
        print(_table(rows))
        return 0
    if sub == "remove-peer":
        if not args.id and not args.address:
            raise CLIError("Error removing peer: Must specify either -id or -address")
        params = {"id": args.id} if args.id else {"address": args.address}
        status, raw, _ = client.request("DELETE", "/v1/operator/raft/peer", params)
        if status >= 400:
            raise CLIError(f"Error removing peer: {raw.decode().strip()}")
        print(f"Removed peer with {'id' if args.id else 'address'} \"{args.id or args.address}\"")
        return 0
    status, raw, _ = client.request("POST", "/v1/operator/raft/transfer-leader", {"id": args.id})
    if status >= 400:
        raise CLIError(f"Error transferring leadership: {raw.decode().strip()}")
    print("Success")
    return 0


def cmd_snapshot(argv: list[str]) -> int:
    sub, rest = _subcommand(argv, "snapshot", ("save", "restore", "inspect"), "[options] FILE")
    p = _parser(f"proconsul snapshot {sub}", f"Snapshot {sub}")
    if sub != "inspect":
        _http_options(p)
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
        print(_table(rows))
        return 0
    client = Client(args)
    if sub == "save":
        status, raw, headers = client.request("GET", "/v1/snapshot")
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
    try:
        blob = Path(args.file).read_bytes()
    except OSError as exc:
        raise CLIError(f"Error opening snapshot file: {exc.strerror}") from exc
    status, raw, _ = client.request("PUT", "/v1/snapshot", body=blob)
    if status >= 400:
        raise CLIError(f"Error restoring snapshot: {raw.decode(errors='replace').strip()}")
    print("Restored snapshot")
    return 0


# ---------------------------------------------------------------------- agent


def agent_parser() -> argparse.ArgumentParser:
    p = _parser("proconsul agent", "Run a Proconsul agent")
    _opt(p, "dev", action="store_true", help="in-memory development server on loopback")
    _opt(p, "server", action="store_true")
    _opt(p, "bootstrap", action="store_true")
    _opt(p, "bootstrap-expect", type=int, default=None)
    _opt(p, "node", default=None)
    _opt(p, "node-id", default=None)
    _opt(p, "datacenter", default=None)
    _opt(p, "data-dir", default=None)
    _opt(p, "bind", default=None)
    _opt(p, "advertise", default=None)
    _opt(p, "client", default=None)
    _opt(p, "http-port", type=int, default=None)
    _opt(p, "dns-port", type=int, default=None)
    _opt(p, "server-port", type=int, default=None)
    _opt(p, "domain", default=None)
    _opt(p, "alt-domain", default=None)
    _opt(p, "recursor", action="append", default=[])
    _opt(p, "retry-join", action="append", default=[])
    _opt(p, "join", action="append", default=[])
    _opt(p, "config-file", action="append", default=[])
    _opt(p, "config-dir", action="append", default=[])
    _opt(p, "log-level", default=None)
    _opt(p, "log-json", action="store_true")
    _opt(p, "enable-script-checks", action="store_true")
    _opt(p, "node-meta", action="append", default=[])
    _opt(p, "ui", action="store_true")
    return p


def build_config(argv: list[str]) -> Any:
    from registry.config import (
        Config,
        ConfigError,
        apply_mapping,
        apply_node_section,
        dev_defaults,
        load_file,
        validate,
    )

    args = agent_parser().parse_args(argv)
    cfg = Config()
    if args.dev:
        dev_defaults(cfg)
    files: list[str] = list(args.config_file)
    for d in args.config_dir:
        dpath = Path(d)
        if not dpath.is_dir():
            raise ConfigError(f"config-dir {d} is not a directory")
        files.extend(str(f) for f in sorted(dpath.iterdir()) if f.suffix in (".json", ".yaml", ".yml"))
    loaded = []
    for f in files:
        data = load_file(f)
        apply_mapping(cfg, data, f)
        cfg.config_files.append(f)
        loaded.append((f, data))
    flags: dict[str, Any] = {}
    for flag, key in (("node", "node_name"), ("node_id", "node_id"), ("datacenter", "datacenter"),
                      ("data_dir", "data_dir"), ("bind", "bind_addr"), ("advertise", "advertise_addr"),
                      ("client", "client_addr"), ("log_level", "log_level"), ("domain", "domain"),
                      ("alt_domain", "alt_domain"), ("bootstrap_expect", "bootstrap_expect")):  # fmt: skip
        value = getattr(args, flag)
        if value is not None:
            flags[key] = value
    for flag in ("server", "bootstrap", "log_json", "enable_script_checks"):
        if getattr(args, flag):
            flags[flag] = True
    ports = {k: v for k, v in (("http", args.http_port), ("dns", args.dns_port), ("server", args.server_port))
             if v is not None}  # fmt: skip
    if ports:
        flags["ports"] = ports
    if args.recursor:
        flags["recursors"] = args.recursor
    if args.retry_join or args.join:
        flags["retry_join"] = args.retry_join + args.join
    if args.node_meta:
        try:
            flags["node_meta"] = dict(m.split(":", 1) for m in args.node_meta)
        except ValueError as exc:
            raise ConfigError("-node-meta must be key:value") from exc
    apply_mapping(cfg, flags, "command line")
    for f, data in loaded:
        apply_node_section(cfg, data, f)
    if "ports" in flags or args.data_dir:
        apply_mapping(cfg, {k: v for k, v in flags.items() if k in ("ports", "data_dir")}, "command line")
    if args.dev or cfg.dev:
        cfg.dev = True
        cfg.server = True
        cfg.bootstrap = True
    from registry.agent.agent import CONFIG_VALIDATORS

    validate(cfg, CONFIG_VALIDATORS)
    return cfg


def cmd_agent(argv: list[str]) -> int:
    from registry.config import ConfigError

    try:
        cfg = build_config(argv)
    except ConfigError as exc:
        print(f"==> {exc}", file=sys.stderr)
        return 1
    from registry import logs

    logs.configure(cfg.log_level, cfg.log_json)
    from registry import eventloop

    return eventloop.run(_run_agent(cfg))


async def _run_agent(cfg: Any) -> int:
    import structlog

    from registry.agent.agent import Agent

    log = structlog.get_logger("proconsul")
    for key in cfg.unknown_keys:
        log.warning("ignoring unknown config key", key=key)
    agent = Agent(cfg)
    from registry.config import ConfigError

    try:
        await agent.start()
    except OSError as exc:
        print(f"==> Error starting agent: {exc.strerror or exc}", file=sys.stderr)
        await agent.stop()
        return 1
    except ConfigError as exc:
        print(f"==> {exc}", file=sys.stderr)
        await agent.stop()
        return 1
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, agent.request_shutdown)
    print("==> Proconsul agent running!", flush=True)
    assert agent.shutdown_requested is not None
    await agent.shutdown_requested.wait()
    log.info("caught signal, shutting down")
    await agent.stop()
    return 0


COMMANDS = {
    "agent": cmd_agent,
    "members": cmd_members,
    "catalog": cmd_catalog,
    "services": cmd_services,
    "kv": cmd_kv,
    "leave": cmd_leave,
    "reload": cmd_reload,
    "version": cmd_version,
    "operator": cmd_operator,
    "snapshot": cmd_snapshot,
}
COMMANDS.update(__import__("registry.cli_connect", fromlist=["COMMANDS"]).COMMANDS)  # intention, connect, tls
COMMANDS.update(__import__("registry.cli_lock", fromlist=["COMMANDS"]).COMMANDS)  # lock


def usage() -> str:
    return (
        "Usage: proconsul [--version] [--help] <command> [<args>]\n\nAvailable commands are:\n"
        + "\n".join(f"    {name}" for name in sorted(COMMANDS))
    )


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "-help", "help"):
        print(usage(), file=sys.stderr if not argv else sys.stdout)
        return 1 if not argv else 0
    if argv[0] in ("-v", "--version", "-version"):
        return cmd_version([])
    fn = COMMANDS.get(argv[0])
    if fn is None:
        print(f"Unknown command: {argv[0]!r}\n\n{usage()}", file=sys.stderr)
        return 1
    try:
        return fn(argv[1:])
    except CLIError as exc:
        print(str(exc), file=sys.stderr)
        return exc.code


if __name__ == "__main__":
    sys.exit(main())
