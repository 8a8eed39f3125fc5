"""``proconsul acl ...``, ``proconsul login`` and ``proconsul logout``: Consul's command/acl/*, command/login and
command/logout verbs, flags, output formats and messages.

Every command talks to the agent's /v1/acl/* API with the token of the HTTP options (``-token``,
``-token-file``, CONSUL_HTTP_TOKEN, CONSUL_HTTP_TOKEN_FILE). Objects print in Consul's "pretty" layout
(``AccessorID:       ...``) or, with ``-format=json``, as the API's JSON indented by four spaces; ``-meta``
adds the hash and indexes to the pretty form. IDs must be given whole (Consul also resolves unique
prefixes of an ID; this CLI does not).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from registry.cli.common import Client, CLIError, Command, http_options, opt, parser, run_client
from registry.client.http import escape

__all__ = ["cmd_acl", "cmd_login", "cmd_logout"]

FORMATS = ("pretty", "json")


# ---------------------------------------------------------------------- formatting


def _go_time(value: Any) -> str:
    """An RFC 3339 time as Go's ``%v`` prints a time.Time: ``2024-01-02 03:04:05.123 +0000 UTC``."""
    text = str(value or "0001-01-01T00:00:00Z")
    date, _, rest = text.partition("T")
    if rest.endswith("Z"):
        clock, zone = rest[:-1], "+0000 UTC"
    elif len(rest) > 6 and rest[-6] in "+-":
        clock, zone = rest[:-6], rest[-6:].replace(":", "")
    else:
        clock, zone = rest, ""
    if "." in clock:
        whole, frac = clock.split(".", 1)
        frac = frac.rstrip("0")
        clock = f"{whole}.{frac}" if frac else whole
    return f"{date} {clock} {zone}".rstrip()


def _hash(obj: dict[str, Any]) -> str:
    """Go's ``%x`` of the hash bytes (base64 in the JSON)."""
    import base64
    import binascii

    try:
        return base64.b64decode(obj.get("Hash") or "").hex()
    except (binascii.Error, ValueError):
        return ""


def _dcs(dcs: list[str] | None, none: str = "all") -> str:
    return ", ".join(dcs) if dcs else none


def _identities(obj: dict[str, Any], indent: str) -> list[str]:
    lines = []
    if obj.get("Policies"):
        lines.append(f"{indent}Policies:")
        lines += [f"{indent}   {p.get('ID', '')} - {p.get('Name', '')}" for p in obj["Policies"]]
    if obj.get("Roles"):
        lines.append(f"{indent}Roles:")
        lines += [f"{indent}   {r.get('ID', '')} - {r.get('Name', '')}" for r in obj["Roles"]]
    if obj.get("ServiceIdentities"):
        lines.append(f"{indent}Service Identities:")
        lines += [f"{indent}   {s.get('ServiceName', '')} (Datacenters: {_dcs(s.get('Datacenters'))})"
                  for s in obj["ServiceIdentities"]]  # fmt: skip
    if obj.get("NodeIdentities"):
        lines.append(f"{indent}Node Identities:")
        lines += [f"{indent}   {n.get('NodeName', '')} (Datacenter: {n.get('Datacenter', '')})" for n in obj["NodeIdentities"]]
    if obj.get("TemplatedPolicies"):
        lines.append(f"{indent}Templated Policies:")
        for t in obj["TemplatedPolicies"]:
            lines.append(f"{indent}   {t.get('TemplateName', '')}")
            name = (t.get("TemplateVariables") or {}).get("Name")
            if name:
                lines.append(f"{indent}      Name: {name}")
            lines.append(f"{indent}      Datacenters: {_dcs(t.get('Datacenters'))}")
    return lines


def format_token(t: dict[str, Any], meta: bool, *, list_entry: bool = False) -> str:
    lines = [f"AccessorID:       {t.get('AccessorID', '')}", f"SecretID:         {t.get('SecretID', '')}",
             f"Description:      {t.get('Description', '')}", f"Local:            {str(bool(t.get('Local'))).lower()}"]  # fmt: skip
    if t.get("AuthMethod"):
        lines.append(f"Auth Method:      {t['AuthMethod']} (Namespace: {t.get('AuthMethodNamespace', '')})")
    lines.append(f"Create Time:      {_go_time(t.get('CreateTime'))}")
    if t.get("ExpirationTime"):
        lines.append(f"Expiration Time:  {_go_time(t['ExpirationTime'])}")
    if list_entry:
        lines.append(f"Legacy:           {str(bool(t.get('Legacy'))).lower()}")
    if meta:
        lines += [f"Hash:             {_hash(t)}", f"Create Index:     {t.get('CreateIndex', 0)}",
                  f"Modify Index:     {t.get('ModifyIndex', 0)}"]  # fmt: skip
    lines += _identities(t, "")
    out = "\n".join(lines) + "\n"
    if t.get("Rules"):
        out += f"Rules:\n{t['Rules']}\n"
    return out


def format_policy(p: dict[str, Any], meta: bool) -> str:
    lines = [f"ID:           {p.get('ID', '')}", f"Name:         {p.get('Name', '')}",
             f"Description:  {p.get('Description', '')}", f"Datacenters:  {_dcs(p.get('Datacenters'), '')}"]  # fmt: skip
    if meta:
        lines += [f"Hash:         {_hash(p)}", f"Create Index: {p.get('CreateIndex', 0)}",
                  f"Modify Index: {p.get('ModifyIndex', 0)}"]  # fmt: skip
    return "\n".join(lines) + "\nRules:\n" + (p.get("Rules") or "")


def format_policy_entry(p: dict[str, Any], meta: bool) -> str:
    lines = [f"{p.get('Name', '')}:", f"   ID:           {p.get('ID', '')}",
             f"   Description:  {p.get('Description', '')}", f"   Datacenters:  {_dcs(p.get('Datacenters'), '')}"]  # fmt: skip
    if meta:
        lines += [f"   Hash:         {_hash(p)}", f"   Create Index: {p.get('CreateIndex', 0)}",
                  f"   Modify Index: {p.get('ModifyIndex', 0)}"]  # fmt: skip
    return "\n".join(lines) + "\n"


def format_role(r: dict[str, Any], meta: bool, *, list_entry: bool = False) -> str:
    pad = "   " if list_entry else ""
    lines = [f"{r.get('Name', '')}:"] if list_entry else []
    if not list_entry:
        lines += [f"ID:           {r.get('ID', '')}", f"Name:         {r.get('Name', '')}"]
    else:
        lines.append(f"   ID:           {r.get('ID', '')}")
    lines.append(f"{pad}Description:  {r.get('Description', '')}")
    if meta:
        lines += [f"{pad}Hash:         {_hash(r)}", f"{pad}Create Index: {r.get('CreateIndex', 0)}",
                  f"{pad}Modify Index: {r.get('ModifyIndex', 0)}"]  # fmt: skip
    lines += _identities({k: v for k, v in r.items() if k != "Roles"}, pad)
    return "\n".join(lines) + "\n"


def format_auth_method(m: dict[str, Any], meta: bool) -> str:
    lines = [f"Name:          {m.get('Name', '')}", f"Type:          {m.get('Type', '')}"]
    if m.get("DisplayName"):
        lines.append(f"DisplayName:   {m['DisplayName']}")
    lines.append(f"Description:   {m.get('Description', '')}")
    if m.get("MaxTokenTTL") not in (None, "", "0s", 0):
        lines.append(f"MaxTokenTTL:   {m['MaxTokenTTL']}")
    if m.get("TokenLocality"):
        lines.append(f"TokenLocality: {m['TokenLocality']}")
    if meta:
        lines += [f"Create Index:  {m.get('CreateIndex', 0)}", f"Modify Index:  {m.get('ModifyIndex', 0)}"]
    return "\n".join(lines) + "\nConfig:\n" + json.dumps(m.get("Config"), indent=2)


def format_auth_method_entry(m: dict[str, Any], meta: bool) -> str:
    lines = [f"{m.get('Name', '')}:", f"   Type:         {m.get('Type', '')}"]
    if m.get("DisplayName"):
        lines.append(f"   DisplayName:  {m['DisplayName']}")
    lines.append(f"   Description:  {m.get('Description', '')}")
    if meta:
        lines += [f"   Create Index: {m.get('CreateIndex', 0)}", f"   Modify Index: {m.get('ModifyIndex', 0)}"]
    return "\n".join(lines) + "\n"


def format_binding_rule(r: dict[str, Any], meta: bool, *, list_entry: bool = False) -> str:
    pad = "   " if list_entry else ""
    lines = [f"{r.get('ID', '')}:"] if list_entry else [f"ID:           {r.get('ID', '')}"]
    lines += [f"{pad}AuthMethod:   {r.get('AuthMethod', '')}", f"{pad}Description:  {r.get('Description', '')}",
              f"{pad}BindType:     {r.get('BindType', '')}", f"{pad}BindName:     {r.get('BindName', '')}"]  # fmt: skip
    name = (r.get("BindVars") or {}).get("Name")
    if name:
        lines.append(f"{pad}BindVars:     \n{pad}     - Name: {name}")
    lines.append(f"{pad}Selector:     {r.get('Selector', '')}")
    if meta:
        lines += [f"{pad}Create Index: {r.get('CreateIndex', 0)}", f"{pad}Modify Index: {r.get('ModifyIndex', 0)}"]
    return "\n".join(lines) + "\n"


def _show(obj: Any, fmt: str, pretty: Callable[[], str]) -> None:
    if fmt == "json":
        print(json.dumps(obj, indent=4))
    else:
        out = pretty()
        print(out, end="" if out.endswith("\n") else "\n")


# ---------------------------------------------------------------------- flags and calls


def _command(name: str, description: str, *, fmt: bool = True) -> argparse.ArgumentParser:
    p = parser(f"proconsul {name}", description)
    http_options(p)
    if fmt:
        opt(p, "format", default="pretty", help="output format: pretty or json")
        opt(p, "meta", action="store_true", help="show the hash and indexes")
    return p


def _parse(p: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    args = p.parse_args(argv)
    if getattr(args, "format", "pretty") not in FORMATS:
        raise CLIError(f"Invalid format: {args.format}; supported formats: {', '.join(FORMATS)}")
    return args


async def _call(client: Client, what: str, method: str, path: str, body: Any = None,
                params: dict[str, Any] | None = None) -> Any:  # fmt: skip
    """One API call; an error answer ends the command with ``<what>: Unexpected response code: ...``."""
    resp = await client.request(method, path, params, json.dumps(body).encode() if body is not None else None)
    if resp.status >= 400:
        raise CLIError(f"{what}: Unexpected response code: {resp.status} ({resp.text})")
    return resp.json()


def _read_value(value: str, what: str) -> str:
    """Consul's ``helpers.LoadDataSource``: ``@file`` reads a file, ``-`` reads stdin, else the value itself."""
    if value.startswith("@"):
        try:
            return Path(value[1:]).read_text()
        except OSError as exc:
            raise CLIError(f"Failed to read file: {exc.strerror or exc}") from None
    if value == "-":
        return sys.stdin.read()
    return value


def _service_identities(values: list[str]) -> list[dict[str, Any]]:
    out = []
    for v in values:
        name, _, dcs = v.partition(":")
        if not name:
            raise CLIError(f"Error parsing service identities: Service identity {v!r} is missing the name")
        out.append({"ServiceName": name, **({"Datacenters": dcs.split(",")} if dcs else {})})
    return out


def _node_identities(values: list[str]) -> list[dict[str, Any]]:
    out = []
    for v in values:
        name, sep, dc = v.partition(":")
        if not sep or not name or not dc:
            raise CLIError(f"Error parsing node identities: Node identity {v!r} must be of the form NODENAME:DATACENTER")
        out.append({"NodeName": name, "Datacenter": dc})
    return out


def _templated(names: list[str], variables: list[str]) -> list[dict[str, Any]]:
    if not names:
        return []
    if len(names) > 1 and variables:
        raise CLIError("Error: -var can only be used with a single -templated-policy")
    name_var = ""
    for v in variables:
        key, sep, value = v.partition(":")
        if not sep or key != "name":
            raise CLIError(f"Error parsing templated policy variables: unknown variable {v!r} (use name:<value>)")
        name_var = value
    return [{"TemplateName": n, **({"TemplateVariables": {"Name": name_var}} if name_var else {})} for n in names]


def _links(ids: list[str], names: list[str]) -> list[dict[str, str]]:
    return [{"ID": i} for i in ids] + [{"Name": n} for n in names]


def _grant_flags(p: argparse.ArgumentParser, *, roles: bool = True) -> None:
    opt(p, "policy-id", action="append", default=[])
    opt(p, "policy-name", action="append", default=[])
    if roles:
        opt(p, "role-id", action="append", default=[])
        opt(p, "role-name", action="append", default=[])
    opt(p, "service-identity", action="append", default=[], help="NAME[:DC1,DC2]")
    opt(p, "node-identity", action="append", default=[], help="NODENAME:DATACENTER")
    opt(p, "templated-policy", action="append", default=[])
    opt(p, "var", action="append", default=[], help="templated policy variable, name:<value>")


def _grants(args: argparse.Namespace, *, roles: bool = True) -> dict[str, Any]:
    body: dict[str, Any] = {}
    policies = _links(args.policy_id, args.policy_name)
    if policies:
        body["Policies"] = policies
    if roles and (role_links := _links(args.role_id, args.role_name)):
        body["Roles"] = role_links
    if args.service_identity:
        body["ServiceIdentities"] = _service_identities(args.service_identity)
    if args.node_identity:
        body["NodeIdentities"] = _node_identities(args.node_identity)
    if args.templated_policy:
        body["TemplatedPolicies"] = _templated(args.templated_policy, args.var)
    return body


def _merge(old: list[dict[str, Any]] | None, new: list[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    seen = {o.get(key) for o in old or []}
    return list(old or []) + [n for n in new if n.get(key) not in seen]


# ---------------------------------------------------------------------- acl bootstrap / set-agent-token


def _bootstrap(argv: list[str]) -> int:
    args = _parse(_command("acl bootstrap", "Bootstrap the ACL system"), argv)

    async def run(client: Client) -> int:
        token = await _call(client, "Failed ACL bootstrapping", "PUT", "/v1/acl/bootstrap")
        _show(token, args.format, lambda: format_token(token, args.meta))
        return 0

    return run_client(args, run)


# Consul's set-agent-token types and the agent token each one sets.
_AGENT_TOKENS = {"default": "default", "agent": "agent", "recovery": "agent_recovery",
                 "agent_recovery": "agent_recovery", "master": "agent_recovery", "replication": "replication",
                 "config_file_service_registration": "config_file_service_registration", "dns": "dns"}  # fmt: skip


def _set_agent_token(argv: list[str]) -> int:
    p = _command("acl set-agent-token", "Assign tokens for the Consul Agent's usage", fmt=False)
    p.add_argument("rest", nargs="*")
    args = _parse(p, argv)
    if len(args.rest) != 2:
        raise CLIError("Missing TYPE and TOKEN arguments")
    kind, token = args.rest
    path = _AGENT_TOKENS.get(kind)
    if path is None:
        raise CLIError(f"Unknown token type: {kind}")
    token = _read_value(token, "token").strip()

    async def run(client: Client) -> int:
        await _call(client, "Error setting token", "PUT", f"/v1/agent/token/{path}", {"Token": token})
        print(f"ACL token {kind!r} set successfully".replace("'", '"'))
        return 0

    return run_client(args, run)


# ---------------------------------------------------------------------- acl token


def _token_id(args: argparse.Namespace, *, self_ok: bool = False) -> str:
    accessor = getattr(args, "accessor_id", None) or getattr(args, "id", None)
    if accessor:
        return accessor
    if self_ok and args.self:
        return "self"
    raise CLIError("Must specify the -accessor-id parameter")


def _token_create(argv: list[str]) -> int:
    p = _command("acl token create", "Create an ACL token")
    opt(p, "description", default="")
    _grant_flags(p)
    opt(p, "expires-ttl", default=None)
    opt(p, "local", action="store_true")
    opt(p, "accessor", default=None)
    opt(p, "secret", default=None)
    args = _parse(p, argv)
    body: dict[str, Any] = {"Description": args.description, "Local": args.local, **_grants(args)}
    if args.expires_ttl:
        body["ExpirationTTL"] = args.expires_ttl
    if args.accessor:
        body["AccessorID"] = args.accessor
    if args.secret:
        body["SecretID"] = args.secret

    async def run(client: Client) -> int:
        token = await _call(client, "Failed to create new token", "PUT", "/v1/acl/token", body)
        _show(token, args.format, lambda: format_token(token, args.meta))
        return 0

    return run_client(args, run)


def _token_read(argv: list[str]) -> int:
    p = _command("acl token read", "Read an ACL token")
    opt(p, "accessor-id", default=None)
    opt(p, "id", default=None, help="deprecated: use -accessor-id")
    opt(p, "self", action="store_true")
    opt(p, "expanded", action="store_true")
    args = _parse(p, argv)
    if args.self and (args.accessor_id or args.id):
        raise CLIError("Cannot use both -accessor-id and -self. Please use only one.")
    token_id = _token_id(args, self_ok=True)

    async def run(client: Client) -> int:
        path = "/v1/acl/token/self" if token_id == "self" else f"/v1/acl/token/{escape(token_id)}"
        params = {"expanded": "true"} if args.expanded else None
        token = await _call(client, f"Error reading token {token_id!r}".replace("'", '"'), "GET", path, params=params)
        _show(token, args.format, lambda: format_token(token, args.meta))
        return 0

    return run_client(args, run)


def _token_update(argv: list[str]) -> int:
    p = _command("acl token update", "Update an ACL token")
    opt(p, "accessor-id", default=None)
    opt(p, "id", default=None, help="deprecated: use -accessor-id")
    opt(p, "description", default=None)
    _grant_flags(p)
    opt(p, "merge-policies", action="store_true")
    opt(p, "merge-roles", action="store_true")
    opt(p, "merge-service-identities", action="store_true")
    opt(p, "merge-node-identities", action="store_true")
    opt(p, "merge-templated-policies", action="store_true")
    args = _parse(p, argv)
    token_id = _token_id(args)
    new = _grants(args)

    async def run(client: Client) -> int:
        token = await _call(client, "Error when retrieving current token", "GET", f"/v1/acl/token/{escape(token_id)}")
        if args.description is not None:
            token["Description"] = args.description
        for field, flag, key in (("Policies", args.merge_policies, "ID"), ("Roles", args.merge_roles, "ID"),
                                 ("ServiceIdentities", args.merge_service_identities, "ServiceName"),
                                 ("NodeIdentities", args.merge_node_identities, "NodeName"),
                                 ("TemplatedPolicies", args.merge_templated_policies, "TemplateName")):  # fmt: skip
            if flag:
                token[field] = _merge(token.get(field), new.get(field, []), key)
            elif field in new:
                token[field] = new[field]
        updated = await _call(client, f"Failed to update token {token_id}", "PUT",
                              f"/v1/acl/token/{escape(token_id)}", token)  # fmt: skip
        if args.format != "json":
            print("Token updated successfully.")
        _show(updated, args.format, lambda: format_token(updated, args.meta))
        return 0

    return run_client(args, run)


def _token_delete(argv: list[str]) -> int:
    p = _command("acl token delete", "Delete an ACL token", fmt=False)
    opt(p, "accessor-id", default=None)
    opt(p, "id", default=None, help="deprecated: use -accessor-id")
    args = _parse(p, argv)
    token_id = _token_id(args)

    async def run(client: Client) -> int:
        await _call(client, f"Error deleting token {token_id!r}".replace("'", '"'), "DELETE",
                    f"/v1/acl/token/{escape(token_id)}")  # fmt: skip
        print(f"Token {token_id!r} deleted successfully".replace("'", '"'))
        return 0

    return run_client(args, run)


def _token_clone(argv: list[str]) -> int:
    p = _command("acl token clone", "Clone an ACL token")
    opt(p, "accessor-id", default=None)
    opt(p, "id", default=None, help="deprecated: use -accessor-id")
    opt(p, "description", default="")
    args = _parse(p, argv)
    token_id = _token_id(args)

    async def run(client: Client) -> int:
        token = await _call(client, "Error cloning token", "PUT", f"/v1/acl/token/{escape(token_id)}/clone",
                            {"Description": args.description})  # fmt: skip
        if args.format != "json":
            print("Token cloned successfully.")
        _show(token, args.format, lambda: format_token(token, args.meta))
        return 0

    return run_client(args, run)


def _token_list(argv: list[str]) -> int:
    args = _parse(_command("acl token list", "List ACL tokens"), argv)

    async def run(client: Client) -> int:
        tokens = await _call(client, "Failed to retrieve the token list", "GET", "/v1/acl/tokens") or []
        _show(tokens, args.format, lambda: "\n".join(format_token(t, args.meta, list_entry=True) for t in tokens))
        return 0

    return run_client(args, run)


# ---------------------------------------------------------------------- acl policy


def _policy_path(args: argparse.Namespace) -> str:
    if args.id:
        return f"/v1/acl/policy/{escape(args.id)}"
    if args.name:
        return f"/v1/acl/policy/name/{escape(args.name)}"
    raise CLIError("Must specify either the -id or -name parameters")


def _policy_create(argv: list[str]) -> int:
    p = _command("acl policy create", "Create an ACL policy")
    opt(p, "name", default="")
    opt(p, "description", default="")
    opt(p, "valid-datacenter", action="append", default=[])
    opt(p, "rules", default="")
    args = _parse(p, argv)
    if not args.name:
        raise CLIError("Missing require '-name' flag")
    rules = _read_value(args.rules, "rules")
    body = {"Name": args.name, "Description": args.description, "Rules": rules,
            **({"Datacenters": args.valid_datacenter} if args.valid_datacenter else {})}  # fmt: skip

    async def run(client: Client) -> int:
        policy = await _call(client, "Failed to create new policy", "PUT", "/v1/acl/policy", body)
        _show(policy, args.format, lambda: format_policy(policy, args.meta))
        return 0

    return run_client(args, run)


def _policy_read(argv: list[str]) -> int:
    p = _command("acl policy read", "Read an ACL policy")
    opt(p, "id", default=None)
    opt(p, "name", default=None)
    args = _parse(p, argv)
    path = _policy_path(args)

    async def run(client: Client) -> int:
        policy = await _call(client, f"Error reading policy {(args.id or args.name)!r}".replace("'", '"'), "GET", path)
        _show(policy, args.format, lambda: format_policy(policy, args.meta))
        return 0

    return run_client(args, run)


def _policy_update(argv: list[str]) -> int:
    p = _command("acl policy update", "Update an ACL policy")
    opt(p, "id", default=None)
    opt(p, "name", default=None)
    opt(p, "description", default=None)
    opt(p, "valid-datacenter", action="append", default=[])
    opt(p, "rules", default=None)
    args = _parse(p, argv)
    if not args.id:
        raise CLIError("Cannot update a policy without specifying the -id parameter")

    async def run(client: Client) -> int:
        policy = await _call(client, f"Error reading policy {args.id!r}".replace("'", '"'), "GET",
                             f"/v1/acl/policy/{escape(args.id)}")  # fmt: skip
        if args.name is not None:
            policy["Name"] = args.name
        if args.description is not None:
            policy["Description"] = args.description
        if args.rules is not None:
            policy["Rules"] = _read_value(args.rules, "rules")
        if args.valid_datacenter:
            policy["Datacenters"] = args.valid_datacenter
        updated = await _call(client, "Error updating policy", "PUT", f"/v1/acl/policy/{escape(args.id)}", policy)
        _show(updated, args.format, lambda: format_policy(updated, args.meta))
        return 0

    return run_client(args, run)


def _policy_delete(argv: list[str]) -> int:
    p = _command("acl policy delete", "Delete an ACL policy", fmt=False)
    opt(p, "id", default=None)
    opt(p, "name", default=None)
    args = _parse(p, argv)

    async def run(client: Client) -> int:
        policy_id = args.id
        if not policy_id:
            policy = await _call(client, "Error determining policy ID", "GET", _policy_path(args))
            policy_id = policy["ID"]
        await _call(client, f"Error deleting policy {policy_id!r}".replace("'", '"'), "DELETE",
                    f"/v1/acl/policy/{escape(policy_id)}")  # fmt: skip
        print(f"Policy {policy_id!r} deleted successfully".replace("'", '"'))
        return 0

    return run_client(args, run)


def _policy_list(argv: list[str]) -> int:
    args = _parse(_command("acl policy list", "List ACL policies"), argv)

    async def run(client: Client) -> int:
        policies = await _call(client, "Failed to retrieve the policy list", "GET", "/v1/acl/policies") or []
        _show(policies, args.format, lambda: "".join(format_policy_entry(x, args.meta) for x in policies))
        return 0

    return run_client(args, run)


# ---------------------------------------------------------------------- acl role


def _role_path(args: argparse.Namespace) -> str:
    if args.id:
        return f"/v1/acl/role/{escape(args.id)}"
    if args.name:
        return f"/v1/acl/role/name/{escape(args.name)}"
    raise CLIError("Must specify either the -id or -name parameters")


def _role_create(argv: list[str]) -> int:
    p = _command("acl role create", "Create an ACL role")
    opt(p, "name", default="")
    opt(p, "description", default="")
    _grant_flags(p, roles=False)
    args = _parse(p, argv)
    if not args.name:
        raise CLIError("Missing required '-name' flag")
    grants = _grants(args, roles=False)
    if not grants:
        raise CLIError("Cannot create a role without specifying -policy-name, -policy-id, -service-identity, "
                       "-node-identity, or -templated-policy at least once")  # fmt: skip
    body = {"Name": args.name, "Description": args.description, **grants}

    async def run(client: Client) -> int:
        role = await _call(client, "Failed to create new role", "PUT", "/v1/acl/role", body)
        _show(role, args.format, lambda: format_role(role, args.meta))
        return 0

    return run_client(args, run)


def _role_read(argv: list[str]) -> int:
    p = _command("acl role read", "Read an ACL role")
    opt(p, "id", default=None)
    opt(p, "name", default=None)
    args = _parse(p, argv)
    path = _role_path(args)

    async def run(client: Client) -> int:
        role = await _call(client, f"Error reading role {(args.id or args.name)!r}".replace("'", '"'), "GET", path)
        _show(role, args.format, lambda: format_role(role, args.meta))
        return 0

    return run_client(args, run)


def _role_update(argv: list[str]) -> int:
    p = _command("acl role update", "Update an ACL role")
    opt(p, "id", default=None)
    opt(p, "name", default=None)
    opt(p, "description", default=None)
    _grant_flags(p, roles=False)
    opt(p, "no-merge", action="store_true")
    args = _parse(p, argv)
    if not args.id:
        raise CLIError("Cannot update a role without specifying the -id parameter")
    new = _grants(args, roles=False)

    async def run(client: Client) -> int:
        role = await _call(client, f"Error reading role {args.id!r}".replace("'", '"'), "GET",
                           f"/v1/acl/role/{escape(args.id)}")  # fmt: skip
        if args.name is not None:
            role["Name"] = args.name
        if args.description is not None:
            role["Description"] = args.description
        for field, key in (("Policies", "ID"), ("ServiceIdentities", "ServiceName"), ("NodeIdentities", "NodeName"),
                           ("TemplatedPolicies", "TemplateName")):  # fmt: skip
            if args.no_merge:
                role[field] = new.get(field, [])
            elif field in new:
                role[field] = _merge(role.get(field), new[field], key)
        updated = await _call(client, "Error updating role", "PUT", f"/v1/acl/role/{escape(args.id)}", role)
        _show(updated, args.format, lambda: format_role(updated, args.meta))
        return 0

    return run_client(args, run)


def _role_delete(argv: list[str]) -> int:
    p = _command("acl role delete", "Delete an ACL role", fmt=False)
    opt(p, "id", default=None)
    opt(p, "name", default=None)
    args = _parse(p, argv)

    async def run(client: Client) -> int:
        role_id = args.id
        if not role_id:
            role = await _call(client, "Error determining role ID", "GET", _role_path(args))
            role_id = role["ID"]
        await _call(client, f"Error deleting role {role_id!r}".replace("'", '"'), "DELETE",
                    f"/v1/acl/role/{escape(role_id)}")  # fmt: skip
        print(f"Role {role_id!r} deleted successfully".replace("'", '"'))
        return 0

    return run_client(args, run)


def _role_list(argv: list[str]) -> int:
    args = _parse(_command("acl role list", "List ACL roles"), argv)

    async def run(client: Client) -> int:
        roles = await _call(client, "Failed to retrieve the role list", "GET", "/v1/acl/roles") or []
        _show(roles, args.format, lambda: "".join(format_role(r, args.meta, list_entry=True) for r in roles))
        return 0

    return run_client(args, run)


# ---------------------------------------------------------------------- acl auth-method


def _auth_method_flags(p: argparse.ArgumentParser) -> None:
    opt(p, "name", default="")
    opt(p, "type", default="")
    opt(p, "display-name", default=None)
    opt(p, "description", default=None)
    opt(p, "max-token-ttl", default=None)
    opt(p, "token-locality", default=None)
    opt(p, "config", default=None, help="the method's Config as JSON (@file, - for stdin)")


def _auth_method_body(args: argparse.Namespace, body: dict[str, Any]) -> dict[str, Any]:
    for field, value in (("DisplayName", args.display_name), ("Description", args.description),
                         ("MaxTokenTTL", args.max_token_ttl), ("TokenLocality", args.token_locality)):  # fmt: skip
        if value is not None:
            body[field] = value
    if args.config is not None:
        try:
            body["Config"] = json.loads(_read_value(args.config, "config"))
        except json.JSONDecodeError as exc:
            raise CLIError(f"Error parsing JSON for auth method config: {exc}") from None
    return body


def _auth_method_create(argv: list[str]) -> int:
    p = _command("acl auth-method create", "Create an ACL auth method")
    _auth_method_flags(p)
    args = _parse(p, argv)
    if not args.type:
        raise CLIError("Missing required '-type' flag")
    if not args.name:
        raise CLIError("Missing required '-name' flag")
    body = _auth_method_body(args, {"Name": args.name, "Type": args.type})

    async def run(client: Client) -> int:
        method = await _call(client, "Failed to create new auth method", "PUT", "/v1/acl/auth-method", body)
        _show(method, args.format, lambda: format_auth_method(method, args.meta))
        return 0

    return run_client(args, run)


def _auth_method_read(argv: list[str]) -> int:
    p = _command("acl auth-method read", "Read an ACL auth method")
    opt(p, "name", default="")
    args = _parse(p, argv)
    if not args.name:
        raise CLIError("Must specify the -name parameter")

    async def run(client: Client) -> int:
        resp = await client.request("GET", f"/v1/acl/auth-method/{escape(args.name)}")
        if resp.status == 404:
            raise CLIError(f"Auth method not found with name {args.name!r}".replace("'", '"'))
        if resp.status >= 400:
            raise CLIError(f"Error reading auth method {args.name!r}: Unexpected response code: {resp.status} "
                           f"({resp.text})".replace(f"'{args.name}'", f'"{args.name}"'))  # fmt: skip
        method = resp.json()
        _show(method, args.format, lambda: format_auth_method(method, args.meta))
        return 0

    return run_client(args, run)


def _auth_method_update(argv: list[str]) -> int:
    p = _command("acl auth-method update", "Update an ACL auth method")
    _auth_method_flags(p)
    opt(p, "no-merge", action="store_true")
    args = _parse(p, argv)
    if not args.name:
        raise CLIError("Cannot update an auth method without specifying the -name parameter")

    async def run(client: Client) -> int:
        path = f"/v1/acl/auth-method/{escape(args.name)}"
        if args.no_merge:
            body = _auth_method_body(args, {"Name": args.name, "Type": args.type})
        else:
            body = _auth_method_body(args, await _call(client, "Error when retrieving current auth method", "GET", path))
        method = await _call(client, "Error updating auth method", "PUT", path, body)
        _show(method, args.format, lambda: format_auth_method(method, args.meta))
        return 0

    return run_client(args, run)


def _auth_method_delete(argv: list[str]) -> int:
    p = _command("acl auth-method delete", "Delete an ACL auth method", fmt=False)
    opt(p, "name", default="")
    args = _parse(p, argv)
    if not args.name:
        raise CLIError("Must specify the -name parameter")

    async def run(client: Client) -> int:
        await _call(client, f"Error deleting auth method {args.name!r}".replace("'", '"'), "DELETE",
                    f"/v1/acl/auth-method/{escape(args.name)}")  # fmt: skip
        print(f"Auth-method {args.name!r} deleted successfully".replace("'", '"'))
        return 0

    return run_client(args, run)


def _auth_method_list(argv: list[str]) -> int:
    args = _parse(_command("acl auth-method list", "List ACL auth methods"), argv)

    async def run(client: Client) -> int:
        methods = await _call(client, "Failed to retrieve the auth method list", "GET", "/v1/acl/auth-methods") or []
        _show(methods, args.format, lambda: "".join(format_auth_method_entry(m, args.meta) for m in methods))
        return 0

    return run_client(args, run)


# ---------------------------------------------------------------------- acl binding-rule


def _binding_rule_flags(p: argparse.ArgumentParser) -> None:
    opt(p, "method", default="")
    opt(p, "description", default=None)
    opt(p, "selector", default=None)
    opt(p, "bind-type", default=None)
    opt(p, "bind-name", default=None)
    opt(p, "bind-vars", action="append", default=[], help="templated policy variables, name=<value>")


def _binding_rule_body(args: argparse.Namespace, body: dict[str, Any]) -> dict[str, Any]:
    for field, value in (("Description", args.description), ("Selector", args.selector),
                         ("BindType", args.bind_type), ("BindName", args.bind_name)):  # fmt: skip
        if value is not None:
            body[field] = value
    for v in args.bind_vars:
        key, sep, value = v.partition("=")
        if not sep or key.lower() != "name":
            raise CLIError(f"Error parsing -bind-vars: unknown variable {v!r} (use name=<value>)")
        body["BindVars"] = {"Name": value}
    return body


def _binding_rule_create(argv: list[str]) -> int:
    p = _command("acl binding-rule create", "Create an ACL binding rule")
    _binding_rule_flags(p)
    args = _parse(p, argv)
    if not args.method:
        raise CLIError("Missing required '-method' flag")
    if not args.bind_type:
        raise CLIError("Missing required '-bind-type' flag")
    if not args.bind_name:
        raise CLIError("Missing required '-bind-name' flag")
    body = _binding_rule_body(args, {"AuthMethod": args.method})

    async def run(client: Client) -> int:
        rule = await _call(client, "Failed to create new binding rule", "PUT", "/v1/acl/binding-rule", body)
        _show(rule, args.format, lambda: format_binding_rule(rule, args.meta))
        return 0

    return run_client(args, run)


def _binding_rule_read(argv: list[str]) -> int:
    p = _command("acl binding-rule read", "Read an ACL binding rule")
    opt(p, "id", default="")
    args = _parse(p, argv)
    if not args.id:
        raise CLIError("Must specify the -id parameter")

    async def run(client: Client) -> int:
        resp = await client.request("GET", f"/v1/acl/binding-rule/{escape(args.id)}")
        if resp.status == 404:
            raise CLIError(f"Binding rule not found with ID {args.id!r}".replace("'", '"'))
        if resp.status >= 400:
            raise CLIError(f"Error reading binding rule: Unexpected response code: {resp.status} ({resp.text})")
        rule = resp.json()
        _show(rule, args.format, lambda: format_binding_rule(rule, args.meta))
        return 0

    return run_client(args, run)


def _binding_rule_update(argv: list[str]) -> int:
    p = _command("acl binding-rule update", "Update an ACL binding rule")
    opt(p, "id", default="")
    _binding_rule_flags(p)
    opt(p, "no-merge", action="store_true")
    args = _parse(p, argv)
    if not args.id:
        raise CLIError("Cannot update a binding rule without specifying the -id parameter")

    async def run(client: Client) -> int:
        path = f"/v1/acl/binding-rule/{escape(args.id)}"
        if args.no_merge:
            base: dict[str, Any] = {"ID": args.id, **({"AuthMethod": args.method} if args.method else {})}
        else:
            base = await _call(client, "Error when retrieving current binding rule", "GET", path)
        rule = await _call(client, "Error updating binding rule", "PUT", path, _binding_rule_body(args, base))
        _show(rule, args.format, lambda: format_binding_rule(rule, args.meta))
        return 0

    return run_client(args, run)


def _binding_rule_delete(argv: list[str]) -> int:
    p = _command("acl binding-rule delete", "Delete an ACL binding rule", fmt=False)
    opt(p, "id", default="")
    args = _parse(p, argv)
    if not args.id:
        raise CLIError("Must specify the -id parameter")

    async def run(client: Client) -> int:
        await _call(client, f"Error deleting binding rule {args.id!r}".replace("'", '"'), "DELETE",
                    f"/v1/acl/binding-rule/{escape(args.id)}")  # fmt: skip
        print(f"Binding rule {args.id!r} deleted successfully".replace("'", '"'))
        return 0

    return run_client(args, run)


def _binding_rule_list(argv: list[str]) -> int:
    p = _command("acl binding-rule list", "List ACL binding rules")
    opt(p, "method", default=None)
    args = _parse(p, argv)

    async def run(client: Client) -> int:
        params = {"authmethod": args.method} if args.method else None
        rules = await _call(client, "Failed to retrieve the binding rule list", "GET", "/v1/acl/binding-rules",
                            params=params) or []  # fmt: skip
        _show(rules, args.format, lambda: "".join(format_binding_rule(r, args.meta, list_entry=True) for r in rules))
        return 0

    return run_client(args, run)


# ---------------------------------------------------------------------- dispatch

_VERBS = ("create", "read", "update", "delete", "list")
_GROUPS: dict[str, dict[str, Command]] = {
    "token": {"create": _token_create, "read": _token_read, "update": _token_update, "delete": _token_delete,
              "list": _token_list, "clone": _token_clone},
    "policy": {"create": _policy_create, "read": _policy_read, "update": _policy_update, "delete": _policy_delete,
               "list": _policy_list},
    "role": {"create": _role_create, "read": _role_read, "update": _role_update, "delete": _role_delete,
             "list": _role_list},
    "auth-method": {"create": _auth_method_create, "read": _auth_method_read, "update": _auth_method_update,
                    "delete": _auth_method_delete, "list": _auth_method_list},
    "binding-rule": {"create": _binding_rule_create, "read": _binding_rule_read, "update": _binding_rule_update,
                     "delete": _binding_rule_delete, "list": _binding_rule_list},
}  # fmt: skip
_USAGE = ("Usage: proconsul acl <subcommand> [options] [args]\n\nSubcommands:\n    bootstrap\n    set-agent-token\n"
          + "".join(f"    {g} <{'|'.join(v)}>\n" for g, v in _GROUPS.items()))  # fmt: skip


def cmd_acl(argv: list[str]) -> int:
    """``proconsul acl <bootstrap|set-agent-token|token|policy|role|auth-method|binding-rule> ...``."""
    if not argv:
        raise CLIError(_USAGE.rstrip())
    group, rest = argv[0], argv[1:]
    if group == "bootstrap":
        return _bootstrap(rest)
    if group == "set-agent-token":
        return _set_agent_token(rest)
    verbs = _GROUPS.get(group)
    if verbs is None or not rest or rest[0] not in verbs:
        raise CLIError(_USAGE.rstrip())
    return verbs[rest[0]](rest[1:])


# ---------------------------------------------------------------------- login / logout


def cmd_login(argv: list[str]) -> int:
    """``proconsul login -method=<name> -bearer-token-file=<path> -token-sink-file=<path> [-meta k=v]``: trade
    a bearer token for an ACL token and write its SecretID to the sink file (mode 0600), as Consul's does."""
    p = _command("login", "Login to Consul using an auth method", fmt=False)
    opt(p, "method", default="")
    opt(p, "bearer-token-file", default="")
    opt(p, "token-sink-file", default="")
    opt(p, "meta", action="append", default=[], help="key=value metadata for the token (repeatable)")
    args = _parse(p, argv)
    if not args.method:
        raise CLIError("Missing required '-method' flag")
    if not args.token_sink_file:
        raise CLIError("Missing required '-token-sink-file' flag")
    if not args.bearer_token_file:
        raise CLIError("Missing required '-bearer-token-file' flag")
    meta: dict[str, str] = {}
    for kv in args.meta:
        key, sep, value = kv.partition("=")
        if not sep or not key:
            raise CLIError(f"Error parsing -meta: {kv!r} is not key=value")
        meta[key] = value
    try:
        bearer = Path(args.bearer_token_file).read_text().strip()
    except OSError as exc:
        raise CLIError(f"Error reading bearer token file: {exc.strerror or exc}") from None
    if not bearer:
        raise CLIError(f"No bearer token found in {args.bearer_token_file}")
    body: dict[str, Any] = {"AuthMethod": args.method, "BearerToken": bearer, **({"Meta": meta} if meta else {})}

    async def run(client: Client) -> int:
        token = await _call(client, "Error logging in", "POST", "/v1/acl/login", body)
        secret = str((token or {}).get("SecretID", ""))
        try:
            fd = os.open(args.token_sink_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secret)
        except OSError as exc:
            raise CLIError(f"Error writing token to file sink: {exc.strerror or exc}") from None
        return 0

    return run_client(args, run)


def cmd_logout(argv: list[str]) -> int:
    """``proconsul logout``: destroy the token of the HTTP options, which a login must have created."""
    args = _parse(_command("logout", "Destroy a Consul token created with login", fmt=False), argv)

    async def run(client: Client) -> int:
        await _call(client, "Error destroying token", "POST", "/v1/acl/logout")
        return 0

    return run_client(args, run)
