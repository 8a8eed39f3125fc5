"""``proconsul kv get|put|delete``: Consul's command/kv/* verbs, flags, messages and exit codes."""

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
    sub, rest = subcommand(argv, "kv", ("get", "put", "delete"), "[options] KEY [DATA]")
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
