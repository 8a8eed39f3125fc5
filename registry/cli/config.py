"""``proconsul config write|read|list|delete``: Consul's command/config/* verbs, flags, messages and exit codes.

``config write`` takes a file (or ``-`` for stdin) in HCL or JSON, as Consul's does: JSON when the text
starts with ``{``, else HCL, parsed with python-hcl2. Consul's documentation writes config entries in HCL1,
whose objects may hold nested blocks (``Routes = [{ Match { HTTP { PathPrefix = "/admin" } } }]``); HCL2
objects may not, so ``hcl1_objects`` first rewrites ``Name {`` inside an object into ``Name = {``, which
means the same thing there. The decoded map then goes through the same decoder the agent uses
(``registry.configentry.decode``: ``Kind`` or ``kind``, PascalCase or snake_case keys, blocks as
one-element lists), so a typo is reported before anything is sent (``Failed to decode config entry
input: ...``), as Consul's CLI reports it.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

from registry import configentry
from registry.cli.common import Client, CLIError, Command, http_options, opt, parser, run_client

__all__ = ["cmd_config", "hcl1_objects", "parse_config_entry"]

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")


def hcl1_objects(text: str) -> str:
    """Rewrite HCL1's nested blocks inside object values (``Match { ... }`` within ``{ ... }`` or a list)
    into HCL2 attributes (``Match = { ... }``). Blocks in a body (top level, or inside a block) are left as
    they are; strings, comments and heredocs are copied untouched."""
    out: list[str] = []
    # What each open bracket is: "body" (a block's body), "object" (an object value), "list", "paren".
    stack: list[str] = []
    last = ""  # the last significant token: "=", ":", ",", "[", "(", "{", "ident", "string", "value", ""
    pending_ident = -1  # where, in ``out``, an identifier or string that may precede a '{' ends
    i, n = 0, len(text)

    def context() -> str:
        return stack[-1] if stack else "body"

    while i < n:
        ch = text[i]
        if ch == "#" or text.startswith("//", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            out.append(text[i:j])
            i = j
            continue
        if text.startswith("/*", i):
            j = text.find("*/", i + 2)
            j = n if j < 0 else j + 2
            out.append(text[i:j])
            i = j
            continue
        if text.startswith("<<", i):
            m = re.match(r"<<-?([A-Za-z_][A-Za-z0-9_]*)[ \t]*\n", text[i:])
            if m:
                end = re.compile(r"^[ \t]*" + re.escape(m.group(1)) + r"[ \t]*$", re.M)
                found = end.search(text, i + m.end())
                j = n if found is None else found.end()
                out.append(text[i:j])
                i = j
                last, pending_ident = "value", -1
                continue
        if ch == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            j = min(j + 1, n)
            out.append(text[i:j])
            i = j
            last = "string"
            pending_ident = len(out)
            continue
        if ch.isspace():
            out.append(ch)
            i += 1
            continue
        m = _IDENT.match(text, i)
        if m:
            out.append(m.group(0))
            i = m.end()
            last = "ident"
            pending_ident = len(out)
            continue
        if ch == "{":
            ctx = context()
            if last in ("ident", "string") and ctx in ("object", "list") and pending_ident >= 0:
                out.insert(pending_ident, " =")
                stack.append("object")
            elif last in ("ident", "string") and ctx == "body":
                stack.append("body")
            else:
                stack.append("object")
            out.append(ch)
            last, pending_ident = "{", -1
            i += 1
            continue
        if ch in "[(":
            stack.append("list" if ch == "[" else "paren")
        elif ch in "}])" and stack:
            stack.pop()
        out.append(ch)
        last = ch if ch in "=:,[(" else "value"
        pending_ident = -1
        i += 1
    return "".join(out)


def _hcl_decode(text: str) -> Any:
    import hcl2
    from hcl2.utils import SerializationOptions
    from lark.exceptions import UnexpectedInput

    options = SerializationOptions(with_comments=False, explicit_blocks=False, preserve_heredocs=False,
                                   strip_string_quotes=True, preserve_scientific_notation=False)  # fmt: skip
    try:
        raw = hcl2.loads(hcl1_objects(text), serialization_options=options)
    except UnexpectedInput as exc:
        line, column = getattr(exc, "line", -1), getattr(exc, "column", -1)
        where = f"At {line}:{column}: " if line > 0 else ""
        raise ValueError(f"{where}invalid HCL ({type(exc).__name__})") from None
    except (Exception, RecursionError) as exc:  # the parser's other failures are still bad input
        raise ValueError(f"invalid HCL ({type(exc).__name__})") from None
    return _unquote_keys(raw)


def _unquote_keys(value: Any) -> Any:
    # python-hcl2 keeps the quotes of quoted object keys ("*" = {...}); HCL1 does not.
    if isinstance(value, dict):
        return {(k[1:-1] if isinstance(k, str) and len(k) >= 2 and k[0] == k[-1] == '"' else k): _unquote_keys(v)
                for k, v in value.items()}  # fmt: skip
    if isinstance(value, list):
        return [_unquote_keys(v) for v in value]
    return value


def parse_config_entry(text: str) -> dict[str, Any]:
    """A config entry from HCL or JSON text (Consul's helpers.ParseConfigEntry), decoded into its JSON
    shape. Raises CLIError with Consul's ``Failed to decode config entry input: ...``."""
    try:
        raw = json.loads(text) if text.lstrip().startswith("{") else _hcl_decode(text)
    except (ValueError, json.JSONDecodeError) as exc:
        raise CLIError(f"Failed to decode config entry input: Failed to decode config entry input: {exc}") from None
    if not isinstance(raw, dict):
        raise CLIError("Failed to decode config entry input: Payload does not contain a kind/Kind key at the top level")
    kind = raw.get("Kind", raw.get("kind"))
    if isinstance(kind, str) and kind not in configentry.KINDS:
        return raw  # service-intentions and the rest: the agent decodes and checks them
    try:
        return configentry.decode(raw)
    except configentry.ConfigEntryError as exc:
        raise CLIError(f"Failed to decode config entry input: {exc}") from None


def _name_of(entry: dict[str, Any]) -> str:
    return str(next((v for k, v in entry.items() if str(k).lower() == "name"), ""))


def _kind_of(entry: dict[str, Any]) -> str:
    return str(next((v for k, v in entry.items() if str(k).lower() == "kind"), ""))


def _config_write(argv: list[str]) -> int:
    p = parser("proconsul config write", "Create or update a centralized config entry")
    http_options(p)
    opt(p, "cas", action="store_true", help="perform a Check-And-Set operation (needs -modify-index)")
    opt(p, "modify-index", type=int, default=0, help="the ModifyIndex of the config entry, with -cas")
    p.add_argument("source", nargs="*")
    args = p.parse_args(argv)
    if len(args.source) != 1:
        raise CLIError("Must provide exactly one positional argument to specify the config entry to write")
    source = args.source[0]
    try:
        text = sys.stdin.read() if source == "-" else Path(source).read_text()
    except OSError as exc:
        raise CLIError(f"Failed to load data: Failed to read file: {exc}") from None
    entry = parse_config_entry(text)
    kind, name = _kind_of(entry), _name_of(entry)

    async def write(client: Client) -> int:
        params = {"cas": str(args.modify_index)} if args.cas else None
        resp = await client.request("PUT", "/v1/config", params, json.dumps(entry).encode())
        if resp.status >= 400:
            raise CLIError(f"Error writing config entry {kind}/{name}: Unexpected response code: {resp.status} "
                           f"({resp.text})")  # fmt: skip
        if resp.json() is not True:
            raise CLIError(f"Config entry not updated: {kind}/{name}")
        print(f"Config entry written: {kind}/{name}")
        return 0

    return run_client(args, write)


def _kind_name(argv: list[str], prog: str, what: str, *, name: bool = True, cas: bool = False) -> Any:
    p = parser(prog, what)
    http_options(p)
    opt(p, "kind", default="", help="the kind of configuration")
    if name:
        opt(p, "name", default="", help="the name of the configuration")
    if cas:
        opt(p, "cas", action="store_true", help="perform a Check-And-Set operation (needs -modify-index)")
        opt(p, "modify-index", type=int, default=0, help="the ModifyIndex of the config entry, with -cas")
    else:
        opt(p, "filter", default="", help="a filter expression (list)")
    args = p.parse_args(argv)
    if not args.kind:
        raise CLIError("Must specify the -kind parameter")
    if name and not args.name:
        raise CLIError("Must specify the -name parameter")
    return args


def _config_read(argv: list[str]) -> int:
    args = _kind_name(argv, "proconsul config read", "Read a centralized config entry")

    async def read(client: Client) -> int:
        resp = await client.request("GET", f"/v1/config/{args.kind}/{args.name}")
        if resp.status >= 400:
            raise CLIError(f'Error reading config entry "{args.kind}" / "{args.name}": Unexpected response code: '
                           f"{resp.status} ({resp.text})")  # fmt: skip
        print(json.dumps(resp.json(), indent=4))
        return 0

    return run_client(args, read)


def _config_list(argv: list[str]) -> int:
    args = _kind_name(argv, "proconsul config list", "List centralized config entries of a given kind", name=False)

    async def list_(client: Client) -> int:
        params = {"filter": args.filter} if args.filter else None
        resp = await client.request("GET", f"/v1/config/{args.kind}", params)
        if resp.status >= 400:
            raise CLIError(f'Error listing config entries for kind "{args.kind}": Unexpected response code: '
                           f"{resp.status} ({resp.text})")  # fmt: skip
        for entry in resp.json() or []:
            print(entry.get("Name", ""))
        return 0

    return run_client(args, list_)


def _config_delete(argv: list[str]) -> int:
    args = _kind_name(argv, "proconsul config delete", "Delete a centralized config entry", cas=True)

    async def delete(client: Client) -> int:
        params = {"cas": str(args.modify_index)} if args.cas else None
        resp = await client.request("DELETE", f"/v1/config/{args.kind}/{args.name}", params)
        if resp.status >= 400:
            raise CLIError(f"Error deleting config entry {args.kind}/{args.name}: Unexpected response code: "
                           f"{resp.status} ({resp.text})")  # fmt: skip
        if args.cas and resp.json() is not True:
            raise CLIError(f"Config entry not deleted: {args.kind}/{args.name}")
        print(f"Config entry deleted: {args.kind}/{args.name}")
        return 0

    return run_client(args, delete)


_SUBCOMMANDS: dict[str, Command] = {
    "write": _config_write,
    "read": _config_read,
    "list": _config_list,
    "delete": _config_delete,
}


def cmd_config(argv: list[str]) -> int:
    if not argv or argv[0] not in _SUBCOMMANDS:
        print("Usage: proconsul config <write|read|list|delete> [options]", file=sys.stderr)
        return 1
    return _SUBCOMMANDS[argv[0]](argv[1:])
