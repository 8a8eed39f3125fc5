"""``proconsul event``: fire a user event (Consul's command/event), with Consul's checks, texts and output."""

from __future__ import annotations

from registry.cli.common import Client, CLIError, http_options, opt, parser, run_client
from registry.client.http import escape
from registry.filtering.regexp import go_regexp

USAGE = """Usage: proconsul event [options] [payload]

  Dispatches a custom user event across a datacenter. An event must provide
  a name, but a payload is optional. Events support filtering using
  regular expressions on node name, service, and tag definitions."""


def cmd_event(argv: list[str]) -> int:
    p = parser("proconsul event", "Fire a new event")
    http_options(p)
    opt(p, "name", default="", help="Name of the event.")
    opt(p, "node", default="", help="Regular expression to filter on node names.")
    opt(p, "service", default="", help="Regular expression to filter on service instances.")
    opt(p, "tag", default="", help="Regular expression to filter on service tags. Must be used with -service.")
    p.add_argument("payload", nargs="*")
    args = p.parse_args(argv)
    if not args.name:
        raise CLIError(f"Event name must be specified\n\n{USAGE}")
    for label, pattern in (("node", args.node), ("service", args.service), ("tag", args.tag)):
        if pattern:
            try:
                go_regexp(pattern)
            except ValueError as exc:
                raise CLIError(f"Failed to compile {label} filter regexp: {exc}") from None
    if args.tag and not args.service:
        raise CLIError("Cannot provide tag filter without service filter.")
    if len(args.payload) > 1:
        raise CLIError(f"Too many command line arguments.\n\n{USAGE}")
    payload = args.payload[0].encode() if args.payload else None

    async def fire(client: Client) -> int:
        status, raw, _ = await client.request("GET", "/v1/agent/self")
        if status >= 400:
            raise CLIError(f"Error querying Consul agent: Unexpected response code: {status} "
                           f"({raw.decode(errors='replace').strip()})")  # fmt: skip
        params = {k: v for k, v in (("node", args.node), ("service", args.service), ("tag", args.tag)) if v}
        resp = await client.request("PUT", "/v1/event/fire/" + escape(args.name), params or None, payload)
        if resp.status >= 400:
            raise CLIError(f"Error firing event: Unexpected response code: {resp.status} ({resp.text})")
        print(f"Event ID: {resp.json()['ID']}")
        return 0

    return run_client(args, fire)

