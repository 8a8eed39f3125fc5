"""What the Raft server needs from the application: a state machine, and how commands and results travel.

The state machine follows hashicorp/raft's ``FSM``: ``apply`` each committed command in log order and
return its result, ``snapshot`` the whole state as bytes, ``restore`` from such bytes. Entries that carry
no command (a leader's no-op, a configuration change) still occupy a log index: ``advance`` tells the
state machine so, as Consul's FSM sees every index (its blocking queries watch the raft index).

The server takes commands as the application builds them and encodes each once into its log entry
(``CommandCodec.encode_command``). A proposal made on a follower is forwarded to the leader and its result
comes back over the RPC port, so results cross the wire: ``encode_result`` turns the state machine's
result into a msgpack-ready value on the leader, ``decode_result`` turns it back on the follower. The
default codec takes commands that are bytes already and passes results through (they must then be
msgpack-ready).
"""

from __future__ import annotations

from typing import Any, Protocol


class StateMachine(Protocol):
    def apply(self, index: int, data: bytes) -> Any:
        """Apply one committed command; the result goes back to whoever proposed it. Never raises."""

    def advance(self, index: int) -> None:
        """A log entry with no command for the state machine: only the index moves."""

    def snapshot(self) -> bytes:
        """The whole state as of the last applied index."""

    def restore(self, data: bytes) -> None:
        """Replace the whole state with a snapshot's (which stands at the snapshot's index)."""


class CommandCodec(Protocol):
    def encode_command(self, cmd: Any) -> bytes:
        """The log entry's data for a command (what ``StateMachine.apply`` gets back)."""

    def encode_result(self, result: Any) -> Any:
        """The wire form (msgpack-ready) of a result, on the leader."""

    def decode_result(self, wire: Any) -> Any:
        """The result a follower's proposer gets back from the wire form."""


class BytesCommands:
    """Commands that are log-entry bytes already, results that are msgpack-ready values already."""

    def encode_command(self, cmd: Any) -> bytes:
        if not isinstance(cmd, bytes):
            raise TypeError(f"a command must be bytes, not {type(cmd).__name__}")
        return cmd

    def encode_result(self, result: Any) -> Any:
        return result

    def decode_result(self, wire: Any) -> Any:
        return wire
