"""``proconsul kv get|put|delete|export|import``: Consul's command/kv/* verbs, flags, messages and exit codes.

``export`` and ``import`` use Consul's JSON (command/kv/impexp): an array of ``{"key", "flags", "value"}``
objects, the value base64, written by ``export`` with tab indentation as Go's json.MarshalIndent writes it,
so files move between Consul and Proconsul either way."""

from __future__ import annotations

import argparse
import base64
import json
import sys
from pathlib import Path
from typing import Any

from registry.cli.common import Client, CLIError, http_options, opt, parser, run_client, subcommand, table
from registry.client.http import kv_path


def cmd_kv(argv: list[str]) -> int:
    sub, rest = subcommand(argv, "kv", ("get", "put", "delete", "export", "import"), "[options] KEY [DATA]")
    if sub == "export":
        return _cmd_export(rest)
    if sub == "import":
        return _cmd_import(rest)
    p = parser(f"proconsul kv {sub}", f"KV {sub}")
    http_options(p)
    if sub == "get":
        opt(p, "recurse", action="store_true")
        opt(p, "keys", action="store_true")
        opt(p, "separator", default="/")
        opt(p, "detailed", action="store_true")
        opt(p, "base64", action="store_true")
    elif sub == "put":
        opt(p, "flags", type=int, default=None)
        opt(p, "cas", action="store_true")
        opt(p, "modify-index", type=int, default=None)
        opt(p, "base64", action="store_true")
        opt(p, "session", default="")
        opt(p, "acquire", action="store_true")
        opt(p, "release", action="store_true")
    else:
        opt(p, "recurse", action="store_true")
        opt(p, "cas", action="store_true")
        opt(p, "modify-index", type=int, default=None)
    p.add_argument("key", nargs="?", default="")
    if sub == "put":
        p.add_argument("data", nargs="?", default=None)
    args = p.parse_args(rest)
    action = {"get": _kv_get, "put": _kv_put, "delete": _kv_delete}[sub]
    return run_client(args, lambda client: action(client, args, args.key, kv_path(args.key)))


async def _kv_put(client: Client, args: argparse.Namespace, key: str, path: str) -> int:
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
        status, raw, _ = await client.request("PUT", path, params, value)
        if status >= 400:
            raise CLIError(f"Error! Failed writing data: {raw.decode(errors='replace').strip()}")
        if raw.strip() != b"true":
            raise CLIError("Error! Did not acquire lock" if args.acquire else "Error! Did not release lock")
        print(f"Success! Lock acquired on: {key}" if args.acquire else f"Success! Lock released on: {key}")
        return 0
    status, raw, _ = await client.request("PUT", path, params, value)
    if status >= 400:
        raise CLIError(f"Error! Failed writing data: {raw.decode(errors='replace').strip()}")
    if raw.strip() != b"true":
        raise CLIError(f"Error! Did not write to {key}: CAS failed")
    print(f"Success! Data written to: {key}")
    return 0


async def _kv_delete(client: Client, args: argparse.Namespace, key: str, path: str) -> int:
    if not key and not args.recurse:
        raise CLIError("Error! Missing KEY argument")
    params: dict[str, Any] = {}
    if args.recurse:
        if args.cas:
            raise CLIError("Cannot specify both -cas and -recurse!")
        params["recurse"] = ""
    if args.cas:
        if args.modify_index is None:
            raise CLIError("Must specify -modify-index with -cas!")
        params["cas"] = args.modify_index
    status, raw, _ = await client.request("DELETE", path, params)
    if status >= 400:
        raise CLIError(f"Error! Failed deleting key: {raw.decode(errors='replace').strip()}")
    if raw.strip() != b"true":
        raise CLIError(f"Error! Did not delete key {key}: CAS failed")
    print(f"Success! Deleted keys with prefix: {key}" if args.recurse else f"Success! Deleted key: {key}")
    return 0


async def _kv_get(client: Client, args: argparse.Namespace, key: str, path: str) -> int:
    if args.keys:
        status, raw, _ = await client.request("GET", path, {"keys": "", "separator": args.separator})
        if status == 404:
            return 0
        if status >= 400:
            raise CLIError(f"Error querying Consul agent: {raw.decode().strip()}")
        for k in json.loads(raw):
            print(k)
        return 0
    if args.recurse:
        status, raw, _ = await client.request("GET", path, {"recurse": ""})
        if status == 404:
            return 0
        if status >= 400:
            raise CLIError(f"Error querying Consul agent: {raw.decode().strip()}")
        for e in json.loads(raw):
            print(f"{e['Key']}:{_value_text(e, args.base64)}")
        return 0
    if not key:
        raise CLIError("Error! Missing KEY argument")
    status, raw, _ = await client.request("GET", path)
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
        print(table(rows))
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


def _go_json(obj: Any) -> str:
    """JSON as Go's json.MarshalIndent(v, "", "\t") writes it (``<``, ``>`` and ``&`` escaped)."""
    text = json.dumps(obj, indent="\t", ensure_ascii=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _cmd_export(argv: list[str]) -> int:
    p = parser("proconsul kv export", "Exports a tree from the KV store as JSON")
    http_options(p)
    p.add_argument("prefix", nargs="*", default=[])
    args = p.parse_args(argv)
    if len(args.prefix) > 1:
        raise CLIError(f"Too many arguments (expected 1, got {len(args.prefix)})")
    prefix = args.prefix[0] if args.prefix else ""
    if prefix.startswith("/"):
        prefix = prefix[1:]  # keys never start with "/"; Consul strips it for the user

    async def export(client: Client) -> int:
        status, raw, _ = await client.request("GET", kv_path(prefix), {"recurse": ""})
        if status == 404:
            entries: list[dict[str, Any]] = []
        elif status >= 400:
            raise CLIError(f"Error querying Consul agent: Unexpected response code: {status} "
                           f"({raw.decode(errors='replace').strip()})")  # fmt: skip
        else:
            entries = json.loads(raw)
        out = [{"key": e["Key"], "flags": e.get("Flags") or 0, "value": e.get("Value") or ""} for e in entries]
        print(_go_json(out))
        return 0

    return run_client(args, export)


def _cmd_import(argv: list[str]) -> int:
    p = parser("proconsul kv import", "Imports a tree stored as JSON to the KV store")
    http_options(p)
    opt(p, "prefix", default="", help="key prefix for the imported data (default: the root)")
    p.add_argument("data", nargs="*", default=[])
    args = p.parse_args(argv)
    if not args.data:
        raise CLIError("Error! Missing DATA argument")
    if len(args.data) > 1:
        raise CLIError(f"Error! Too many arguments (expected 1, got {len(args.data)})")
    data = args.data[0]
    if not data:
        raise CLIError("Error! Empty DATA argument")
    if data.startswith("@"):
        try:
            text = Path(data[1:]).read_text()
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise CLIError(f"Error! Failed to read file: open {data[1:]}: {reason.lower()}") from exc
    elif data == "-":
        text = sys.stdin.read()
    else:
        text = data
    try:
        entries = json.loads(text)
        if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
            raise ValueError("expected an array of {key, flags, value} objects")
        pairs = [(str(e.get("key") or ""), int(e.get("flags") or 0), str(e.get("value") or "")) for e in entries]
    except (ValueError, TypeError) as exc:
        raise CLIError(f"Cannot unmarshal data: {exc}") from exc
    prefix = args.prefix

    async def import_(client: Client) -> int:
        for key, flags, encoded in pairs:
            try:
                value = base64.b64decode(encoded, validate=True)
            except ValueError as exc:
                raise CLIError(f"Error base 64 decoding value for key {key}: {exc}") from exc
            if prefix:
                key = prefix.rstrip("/") + "/" + key.lstrip("/")
            status, raw, _ = await client.request("PUT", kv_path(key), {"flags": flags or None}, value)
            if status >= 400 or raw.strip() != b"true":
                raise CLIError(f"Error! Failed writing data for key {key}: Unexpected response code: {status} "
                               f"({raw.decode(errors='replace').strip()})")  # fmt: skip
            print(f"Imported: {key}")
        return 0

    return run_client(args, import_)
