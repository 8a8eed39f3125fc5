"""Membership by gossip: a SWIM pool with the Lifeguard refinements (hashicorp/memberlist, Serf).

A library like ``registry.raft``: it imports nothing of the application.  The pure parts are exported
here; the asyncio driver (``registry.gossip.driver``) opens sockets, so only the agent imports it.
"""

from registry.gossip.codec import PacketCodec, PacketRejected, PlainCodec
from registry.gossip.config import GossipConfig
from registry.gossip.core import (
    EventKind,
    GossipNode,
    Member,
    MemberEvent,
    Packet,
    PingResult,
    QueryAnswer,
    QueryDone,
    QueryError,
    QueryEvent,
    StreamRequest,
)
from registry.gossip.messages import Address, MemberState, MessageDecodeError

__all__ = [
    "Address",
    "EventKind",
    "GossipConfig",
    "GossipNode",
    "Member",
    "MemberEvent",
    "MemberState",
    "MessageDecodeError",
    "Packet",
    "PacketCodec",
    "PacketRejected",
    "PingResult",
    "PlainCodec",
    "QueryAnswer",
    "QueryDone",
    "QueryError",
    "QueryEvent",
    "StreamRequest",
]
