"""The UI's pages, each built from the HTTP API the way Consul's own UI builds it.

services   ``/v1/internal/ui/services`` (one summary per service), live
service    ``/v1/health/service/<name>`` (instances with their checks), live; its mesh topology from
           ``/v1/internal/ui/service-topology/<name>?kind=``
nodes      ``/v1/internal/ui/nodes`` and ``/v1/status/leader`` (the leader marked), live
kv         ``/v1/kv/<prefix>?keys&separator=/`` for a folder, ``/v1/kv/<key>`` for a key; writes with
           ``?cas=<ModifyIndex>`` so an edit never overwrites a change it did not see (Consul's UI does the
           same), deletes with ``?cas`` too
intentions ``/v1/connect/intentions`` (Consul answers them in precedence order), ``.../exact`` to edit
acl        the login form checks a token with ``/v1/acl/token/self``; tokens, policies and roles lists
ca         ``/v1/connect/ca/roots`` (the active root and the rotated-out ones still trusted), live
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from markupsafe import Markup

from registry.ui.pages import (
    TOKEN_COOKIE,
    UI,
    Refused,
    Visit,
    decode_value,
    escape,
    kv_path,
    pretty_json,
    redirect,
    summary_health,
    worst,
)
from registry.ui.times import parse_time, until
from registry.ui.topology import Edge, render_svg

STATUSES = ("critical", "warning", "passing")


def register(ui: UI) -> None:
    ui.page("services", services)
    ui.page("services/", service)
    ui.page("nodes", nodes)
    ui.page("kv", kv_root)
    ui.page("kv/", kv, "GET,POST")
    ui.page("intentions", intentions, "GET,POST")
    ui.page("intentions/edit", intention_edit)
    ui.page("intentions/delete", intention_delete, "POST")
    ui.page("login", login, "GET,POST")
    ui.page("logout", logout, "POST")
    ui.page("acl/tokens", acl_tokens)
    ui.page("acl/policies", acl_policies)
    ui.page("acl/roles", acl_roles)
    ui.page("ca", ca)


# ---------------------------------------------------------------------------------------------- services


async def services(visit: Visit, _: str) -> web.StreamResponse:
    """All services, worst health first, then by name; ``q`` matches a name or a tag, ``status`` keeps one
    health. Sidecar proxies are not listed on their own: their service says it is in the mesh (Consul's UI)."""
    q = visit.query("q").strip().lower()
    status = visit.query("status")
    if status not in STATUSES:
        status = ""
    summaries, index = await visit.json("/v1/internal/ui/services", index=visit.index())
    rows = []
    for s in summaries or []:
        if s.get("Kind") == "connect-proxy":
            continue
        health = summary_health(s)
        if status and health != status:
            continue
        if q and q not in s["Name"].lower() and not any(q in t.lower() for t in s.get("Tags") or ()):
            continue
        rows.append({**s, "Health": health})
    rows.sort(key=lambda r: (STATUSES.index(r["Health"]), r["Name"]))
    context = {"rows": rows, "index": index, "q": visit.query("q"), "health_filter": status,
               "live": _live_url(visit.ui.url("services"), index, q=visit.query("q"), status=status)}  # fmt: skip
    if visit.query("fragment"):
        return visit.ui.render("services_live.html", visit, **context)
    return visit.ui.render("services.html", visit, title="Services", nav="services", **context)


def _live_url(path: str, index: int, **params: str) -> str:
    from urllib.parse import urlencode

    query = {k: v for k, v in params.items() if v}
    query.update(fragment="1", index=str(index))
    return f"{path}?{urlencode(query)}"


async def service(visit: Visit, name: str) -> web.StreamResponse:
    """One service: each instance with its node, address, port, tags and meta, and every check on it (its
    node's checks too) with status, notes and output."""
    if not name:
        return redirect(visit.ui.url("services"))
    entries, index = await visit.json(f"/v1/health/service/{escape(name)}", index=visit.index())
    instances = []
    for e in entries or []:
        svc, node = e["Service"], e["Node"]
        instances.append({"Node": node["Node"], "NodeAddress": node["Address"], "ID": svc["ID"],
                          "Address": svc.get("Address") or node["Address"], "Port": svc.get("Port", 0),
                          "Tags": svc.get("Tags") or [], "Meta": svc.get("Meta") or {},
                          "Kind": svc.get("Kind", ""), "Checks": e.get("Checks") or [],
                          "Health": worst(e.get("Checks") or [])})  # fmt: skip
    instances.sort(key=lambda i: (STATUSES.index(i["Health"]), i["Node"], i["ID"]))
    context = {"name": name, "instances": instances, "index": index,
               "live": _live_url(visit.ui.url(f"services/{escape(name)}"), index)}  # fmt: skip
    if visit.query("fragment"):
        return visit.ui.render("service_live.html", visit, **context)
    try:
        picture = await _topology(visit, name, {str(i["Kind"]) for i in instances})
    except Refused as exc:
        picture = {"error": exc}
    return visit.ui.render("service.html", visit, title=name, nav="services", topology=picture, **context)


async def _topology(visit: Visit, name: str, kinds: set[str]) -> dict[str, Any] | None:
    """The service's upstreams and downstreams with the intentions' decision for each edge, from Consul's
    ``/v1/internal/ui/service-topology/<name>?kind=`` (the endpoint Consul's UI draws from), drawn as an SVG;
    None when the service is in no one's mesh; ``{"unsupported": kind}`` for a kind the endpoint does not
    describe (a sidecar, a mesh or terminating gateway), which the page names instead."""
    kind = "ingress-gateway" if "ingress-gateway" in kinds else ""
    other = sorted(kinds - {"", "ingress-gateway"})
    if other:
        return {"unsupported": other[0]}
    got, _ = await visit.json(f"/v1/internal/ui/service-topology/{escape(name)}", {"kind": kind})
    got = got or {}

    def edge(s: dict[str, Any], source: str, destination: str) -> Edge:
        intention = s.get("Intention") or {}
        return Edge(source, destination, bool(intention.get("Allowed")), origin=str(s.get("Source") or ""),
                    l7=bool(intention.get("HasPermissions")))  # fmt: skip

    down_edges = [edge(d, str(d.get("Name", "")), name) for d in got.get("Downstreams") or []]
    up_edges = [edge(u, name, str(u.get("Name", ""))) for u in got.get("Upstreams") or []]
    if not up_edges and not down_edges:
        return None
    return {"svg": Markup(render_svg(name, down_edges, up_edges)), "downstreams": down_edges, "upstreams": up_edges,
            "protocol": got.get("Protocol") or "", "filtered": bool(got.get("FilteredByACLs")),
            "transparent": bool(got.get("TransparentProxy"))}  # fmt: skip


# ---------------------------------------------------------------------------------------------- nodes


def _leader_host(leader: Any) -> str:
    text = leader if isinstance(leader, str) else ""
    host, _, _ = text.rpartition(":")
    return host.strip("[]")


async def _leader_node(visit: Visit) -> str:
    """The leader's node name from the Raft configuration (``operator:read``); "" when the token may not
    read it, and the leader is then told by its address, as Consul's UI tells it."""
    try:
        conf, _ = await visit.json("/v1/operator/raft/configuration")
    except Refused:
        return ""
    return next((str(s.get("Node", "")) for s in (conf or {}).get("Servers") or [] if s.get("Leader")), "")


async def nodes(visit: Visit, _: str) -> web.StreamResponse:
    """Every node, worst health first: its checks, services, meta; the Raft leader's node marked (by name
    from the Raft configuration, else the node whose address is /v1/status/leader's)."""
    dump, index = await visit.json("/v1/internal/ui/nodes", index=visit.index())
    leader, _ = await visit.json("/v1/status/leader")
    leader_node = await _leader_node(visit)
    leader_host = _leader_host(leader)
    rows = []
    for n in dump or []:
        is_leader = n.get("Node") == leader_node if leader_node else bool(leader_host) and n.get("Address") == leader_host
        rows.append({**n, "Health": worst(n.get("Checks") or []), "Leader": is_leader})
    rows.sort(key=lambda r: (STATUSES.index(r["Health"]), r["Node"]))
    context = {"rows": rows, "index": index, "leader": leader or "", "live": _live_url(visit.ui.url("nodes"), index)}
    if visit.query("fragment"):
        return visit.ui.render("nodes_live.html", visit, **context)
    return visit.ui.render("nodes.html", visit, title="Nodes", nav="nodes", **context)


# ---------------------------------------------------------------------------------------------- kv


async def kv_root(visit: Visit, _: str) -> web.StreamResponse:
    return redirect(visit.ui.url("kv/"))


def _crumbs(base: str, path: str) -> list[tuple[str, str]]:
    """(label, folder URL) for each folder above ``path``."""
    out = [("(root)", base + "kv/")]
    parts = path.split("/")[:-1]
    for i, part in enumerate(parts):
        out.append((part, base + "kv/" + "/".join(escape(p) for p in parts[: i + 1]) + "/"))
    return out


def _kv_url(base: str, key: str) -> str:
    return base + "kv/" + "/".join(escape(p) for p in key.split("/"))


async def kv(visit: Visit, key: str) -> web.StreamResponse:
    """A folder (a key ending in "/", or the root) lists its keys and sub-folders, live, and offers a form
    for a new key; a key shows its value live (as text, or as indented JSON) beside a form to save it (with
    CAS: the ModifyIndex the form was rendered with) or delete it. The form is not live: what is typed in
    it stays, and the live value above it shows when someone else changed the key meanwhile."""
    if visit.request.method == "POST":
        return await _kv_write(visit, key)
    base = visit.ui.base
    fragment = bool(visit.query("fragment"))
    if key == "" or key.endswith("/"):
        resp = await _kv_get(visit, key, {"keys": "", "separator": "/"})
        keys = resp.json() if resp is not None else []
        index = resp.index if resp is not None else 0
        entries = [{"name": k[len(key):], "url": _kv_url(base, k), "folder": k.endswith("/")}
                   for k in keys or [] if k != key]  # fmt: skip
        context = {"prefix": key, "entries": entries, "index": index,
                   "live": _live_url(_kv_url(base, key) if key else base + "kv/", index)}  # fmt: skip
        if fragment:
            return visit.ui.render("kv_folder_live.html", visit, **context)
        return visit.ui.render("kv_folder.html", visit, title=f"KV {key or '/'}", nav="kv", crumbs=_crumbs(base, key),
                               message=visit.query("message"), **context)  # fmt: skip
    resp = await _kv_get(visit, key, None)
    if resp is None and not fragment:
        raise Refused(404, f"Key {key!r} not found")
    entry = (resp.json() or [{}])[0] if resp is not None else {"ModifyIndex": 0, "Flags": 0}
    index = resp.index if resp is not None else visit.index()
    raw = decode_value(entry.get("Value"))
    fmt = "json" if visit.query("format") == "json" else "text"
    shown = pretty_json(raw) if fmt == "json" else None
    text = shown if shown is not None else raw.decode("utf-8", errors="replace")
    context = {"key": key, "entry": entry, "value": text, "format": fmt, "exists": resp is not None,
               "index": index, "url": _kv_url(base, key), "live": _live_url(_kv_url(base, key), index, format=fmt)}  # fmt: skip
    if fragment:
        return visit.ui.render("kv_value_live.html", visit, **context)
    return visit.ui.render("kv_key.html", visit, title=f"KV {key}", nav="kv", is_json=pretty_json(raw) is not None,
                           crumbs=_crumbs(base, key), message=visit.query("message"), **context)  # fmt: skip


async def _kv_get(visit: Visit, key: str, params: dict[str, str] | None) -> Any:
    """The KV answer (a blocking query when the request carries ``?index``), None for a 404."""
    try:
        return await visit.call("GET", kv_path(key), params, index=visit.index())
    except Refused as exc:
        if exc.status == 404:
            return None
        raise


async def _kv_write(visit: Visit, key: str) -> web.StreamResponse:
    """Save or delete from a form. ``cas`` is the ModifyIndex the form was rendered with (0 for a new key:
    created only if absent); the API answers false when the key changed since, and the page says so."""
    form = await visit.request.post()
    action = str(form.get("action", "save"))
    base = visit.ui.base
    if key == "" or key.endswith("/"):
        name = str(form.get("name", "")).strip()
        if not name:
            raise Refused(400, "A key name is required")
        key = key + name
    cas = str(form.get("cas", "0")) or "0"
    if action == "delete":
        resp = await visit.call("DELETE", kv_path(key), {"cas": cas})
        if resp.json() is not True:
            raise Refused(409, f"Key {key!r} was changed since this page was loaded (CAS index {cas}); "
                               "reload it and try again")  # fmt: skip
        parent = key.rpartition("/")[0]
        return redirect((base + "kv/" + "/".join(escape(p) for p in parent.split("/")) + "/") if parent else base + "kv/")
    value = str(form.get("value", ""))
    if str(form.get("format", "text")) == "json":
        try:
            json.loads(value)
        except ValueError as exc:
            raise Refused(400, f"The value is not valid JSON: {exc}") from None
    resp = await visit.call("PUT", kv_path(key), {"cas": cas}, value.encode())
    if resp.json() is not True:
        raise Refused(409, f"Key {key!r} was changed since this page was loaded (CAS index {cas}); "
                           "reload it and try again")  # fmt: skip
    return redirect(_kv_url(base, key) + "?message=saved")


# ---------------------------------------------------------------------------------------------- intentions


async def intentions(visit: Visit, _: str) -> web.StreamResponse:
    """Every intention in precedence order (the order Consul's list answers), with its L7 permissions; the
    form creates or updates one by its source and destination (``PUT /v1/connect/intentions/exact``)."""
    if visit.request.method == "POST":
        form = await visit.request.post()
        source = str(form.get("source", "")).strip()
        destination = str(form.get("destination", "")).strip()
        body: dict[str, Any] = {"SourceName": source, "DestinationName": destination,
                                "Description": str(form.get("description", ""))}  # fmt: skip
        permissions = str(form.get("permissions", "")).strip()
        if permissions:
            try:
                body["Permissions"] = json.loads(permissions)
            except ValueError as exc:
                raise Refused(400, f"Permissions must be a JSON list: {exc}") from None
        else:
            body["Action"] = str(form.get("action", "deny"))
        await visit.call("PUT", "/v1/connect/intentions/exact", {"source": source, "destination": destination},
                         json.dumps(body).encode())  # fmt: skip
        return redirect(visit.ui.url("intentions"))
    items, _ = await visit.json("/v1/connect/intentions")
    rows = [{**i, "PermissionsJSON": json.dumps(i["Permissions"], indent=1) if i.get("Permissions") else ""}
            for i in items or []]  # fmt: skip
    return visit.ui.render("intentions.html", visit, title="Intentions", nav="intentions", rows=rows,
                           edit=None)  # fmt: skip


async def intention_edit(visit: Visit, _: str) -> web.StreamResponse:
    source, destination = visit.query("source"), visit.query("destination")
    found, _ = await visit.json("/v1/connect/intentions/exact", {"source": source, "destination": destination})
    items, _ = await visit.json("/v1/connect/intentions")
    rows = [{**i, "PermissionsJSON": json.dumps(i["Permissions"], indent=1) if i.get("Permissions") else ""}
            for i in items or []]  # fmt: skip
    edit = {**found, "PermissionsJSON": json.dumps(found["Permissions"]) if found.get("Permissions") else ""}
    return visit.ui.render("intentions.html", visit, title="Edit intention", nav="intentions", rows=rows,
                           edit=edit)  # fmt: skip


async def intention_delete(visit: Visit, _: str) -> web.StreamResponse:
    form = await visit.request.post()
    await visit.call("DELETE", "/v1/connect/intentions/exact",
                     {"source": str(form.get("source", "")), "destination": str(form.get("destination", ""))})
    return redirect(visit.ui.url("intentions"))


# ---------------------------------------------------------------------------------------------- acl


async def login(visit: Visit, _: str) -> web.StreamResponse:
    """The token is checked with ``/v1/acl/token/self`` (Consul's UI does the same) and kept in an
    HttpOnly, SameSite=Strict cookie, sent to the API as ``X-Consul-Token`` by every page."""
    if visit.request.method == "POST":
        form = await visit.request.post()
        token = str(form.get("token", "")).strip()
        visit.token = token
        try:
            await visit.call("GET", "/v1/acl/token/self")
        except Refused as exc:
            if exc.status != 401 and "ACL support disabled" not in exc.text:
                return visit.ui.render("login.html", visit, status=exc.status, title="Log in", nav="login",
                                       error=exc)  # fmt: skip
        resp = redirect(visit.ui.url("services"))
        resp.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="Strict", path=visit.ui.base.rstrip("/"))
        return resp
    return visit.ui.render("login.html", visit, title="Log in", nav="login")


async def logout(visit: Visit, _: str) -> web.StreamResponse:
    resp = redirect(visit.ui.url("login"))
    resp.del_cookie(TOKEN_COOKIE, path=visit.ui.base.rstrip("/"))
    return resp


async def acl_tokens(visit: Visit, _: str) -> web.StreamResponse:
    items, _ = await visit.json("/v1/acl/tokens")
    return visit.ui.render("acl_list.html", visit, title="Tokens", nav="acl", kind="tokens", rows=items or [])


async def acl_policies(visit: Visit, _: str) -> web.StreamResponse:
    items, _ = await visit.json("/v1/acl/policies")
    return visit.ui.render("acl_list.html", visit, title="Policies", nav="acl", kind="policies", rows=items or [])


async def acl_roles(visit: Visit, _: str) -> web.StreamResponse:
    items, _ = await visit.json("/v1/acl/roles")
    return visit.ui.render("acl_list.html", visit, title="Roles", nav="acl", kind="roles", rows=items or [])


# ---------------------------------------------------------------------------------------------- ca


CA_WARN_DAYS = 30  # the CA health check warns when the active root expires within this (ca/provider/model.py)


async def ca(visit: Visit, _: str) -> web.StreamResponse:
    """The active root (name, ID, serial, signing key, validity and how long until it expires) and the rotation
    history: every earlier root the cluster still trusts, newest rotation first, with when it was rotated out
    (``RotatedOutAt``, which Proconsul adds to Consul's roots JSON for rotated-out roots). Live: a rotation
    through the API shows without a reload (the roots answer blocking queries)."""
    roots, index = await visit.json("/v1/connect/ca/roots", index=visit.index())
    roots = roots or {}
    now = datetime.now(UTC)
    listed = [_root_view(r, now) for r in roots.get("Roots") or []]
    active = next((r for r in listed if r["ID"] == roots.get("ActiveRootID")), None)
    earlier = sorted((r for r in listed if r is not active), key=lambda r: r["RotatedAt"] or _EPOCH, reverse=True)
    context = {"trust_domain": roots.get("TrustDomain", ""), "active": active, "earlier": earlier, "index": index,
               "live": _live_url(visit.ui.url("ca"), index)}  # fmt: skip
    if visit.query("fragment"):
        return visit.ui.render("ca_live.html", visit, **context)
    return visit.ui.render("ca.html", visit, title="Certificate authority", nav="ca", **context)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _root_view(root: dict[str, Any], now: datetime) -> dict[str, Any]:
    """One root of /v1/connect/ca/roots with what the page shows beside its own fields: the serial in hex,
    the signing key as "EC P-256" / "RSA 2048-bit", how long until it expires, when it was rotated out."""
    not_after = parse_time(root.get("NotAfter"))
    rotated = parse_time(root.get("RotatedOutAt"))
    key_type, bits = str(root.get("PrivateKeyType") or ""), root.get("PrivateKeyBits") or 0
    key = f"EC P-{bits}" if key_type == "ec" else f"RSA {bits}-bit" if key_type == "rsa" else f"{key_type} {bits}"
    serial = root.get("SerialNumber")
    left = (not_after - now) if not_after is not None else None
    return {**root, "Key": key.strip(), "SerialHex": f"{serial:x}" if isinstance(serial, int) else "",
            "Expires": until(not_after, now), "Expired": left is not None and left.total_seconds() <= 0,
            "ExpiresSoon": left is not None and left.days < CA_WARN_DAYS, "RotatedAt": rotated,
            "RotatedAgo": until(rotated, now)}  # fmt: skip
