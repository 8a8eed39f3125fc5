"""``proconsul snapshot save|restore|inspect`` (Consul's command/snapshot/*): ``save`` verifies what it got
before it replaces the file; ``inspect`` reads a file without an agent."""

from __future__ import annotations

from pathlib import Path

from registry.cli.common import Client, CLIError, http_options, parser, run_client, subcommand, table


def cmd_snapshot(argv: list[str]) -> int:
    sub, rest = subcommand(argv, "snapshot", ("save", "restore", "inspect"), "[options] FILE")
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
