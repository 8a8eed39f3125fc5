"""What a join costs the member it joins through (a server, in a fleet whose ``retry_join`` names the servers).

In process, with the sans-IO core and the real wire codec and encryption: a member that knows ``n`` live
members (built by merging one push-pull of them) answers a joiner's push-pull, timed as the driver would
spend it: open and decode the joiner's frame, ``handle_stream`` (merge the joiner, build the answer), encode
and seal the answer. Twice: with memberlist's full answer (``join_sample = 0``) and with the sampled answer
(``GossipConfig.join_sample``, the default). Also the joiner's follow-up full exchange, which lands on a
random member, and what a join wave of ``n`` joiners would cost the server at these prices.

    python -m bench.gossip_join [--sizes 1000,10000] [--joins 50]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
import uuid

from registry import CONSUL_VERSION
from registry.gossip.config import GossipConfig
from registry.gossip.core import GossipNode
from registry.gossip.keyring import Keyring, decode_key, generate_key
from registry.gossip.messages import Address, MemberState, PushPull, PushState, decode_stream, encode_stream
from registry.gossip.security import EncryptedCodec


def tags(name: str) -> dict[str, str]:
    """A client agent's tags, as Consul's (registry.agent.membership.member_tags)."""
    return {"acls": "0", "build": f"{CONSUL_VERSION}:proconsul", "dc": "dc1", "id": str(uuid.uuid5(uuid.NAMESPACE_DNS, name)),
            "role": "node", "segment": "", "vsn": "2", "vsn_max": "3", "vsn_min": "2"}  # fmt: skip


def member(i: int) -> PushState:
    name = f"agent-{i:05d}"
    return PushState(name, Address(f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", 8301), tags(name), 1,
                     MemberState.ALIVE)  # fmt: skip


def server(n: int, config: GossipConfig, rng: random.Random) -> GossipNode:
    core = GossipNode("server-1", Address("10.255.0.1", 8301), now=0.0, rng=rng, config=config,
                      tags={**tags("server-1"), "role": "consul", "port": "8300"})  # fmt: skip
    core.handle_stream(0.0, PushPull(False, "seed", tuple(member(i) for i in range(n - 1))))
    core.take_outbox()
    core.take_events()
    return core


def time_joins(n: int, joins: int, config: GossipConfig) -> tuple[float, int]:
    """Median seconds of CPU the server spends on one join, and the answer's sealed size in bytes."""
    rng = random.Random(1)
    key = decode_key(generate_key())
    core = server(n, config, rng)
    ours, theirs = EncryptedCodec(Keyring([key])), EncryptedCodec(Keyring([key]))
    spent = []
    size = 0
    for j in range(joins):
        joiner = f"joiner-{j}"
        request = theirs.seal(encode_stream(PushPull(True, joiner, (PushState(
            joiner, Address("10.254.0.1", 8301 + j), tags(joiner), 1, MemberState.ALIVE),))))  # fmt: skip
        started = time.process_time()
        reply = core.handle_stream(1.0 + j, decode_stream(ours.open(request)))
        assert reply is not None
        sealed = ours.seal(encode_stream(reply))
        spent.append(time.process_time() - started)
        size = len(sealed)
        core.take_outbox()
        core.take_events()
    return statistics.median(spent), size


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="1000,10000")
    p.add_argument("--joins", type=int, default=50)
    args = p.parse_args()
    print("| members | answer | server CPU per join | answer (sealed) | a wave of n joins, server CPU |")
    print("|---|---|---|---|---|")
    for n in (int(s) for s in args.sizes.split(",")):
        for label, cfg in (("full (memberlist)", GossipConfig(join_sample=0)), ("sampled", GossipConfig())):
            cpu, size = time_joins(n, args.joins, cfg)
            # A wave: the k-th joiner meets a pool of k members; full answers cost ~ cpu * k / n each.
            wave = cpu * n / 2 if cfg.join_sample == 0 else cpu * n
            print(f"| {n:,} | {label} | {cpu * 1000:.2f} ms | {size / 1024:,.0f} KiB | {wave:,.0f} s |")
        full_sync, size = time_joins(n, max(5, args.joins // 5), GossipConfig(join_sample=0))
        print(f"| {n:,} | the joiner's one full exchange, at a random member | {full_sync * 1000:.2f} ms | "
              f"{size / 1024:,.0f} KiB | spread over the pool |")


if __name__ == "__main__":
    main()
