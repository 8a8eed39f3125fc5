"""The replicated Connect state: CA state, config entries and intention commands through the FSM."""

from __future__ import annotations

import os

import pytest
from connect_helpers import CLUSTER_ID, START, Log, init_ca

from ca import provider
from registry.connect.state import (
    CMD_CA_SET,
    CMD_CONFIG_ENTRY,
    CMD_INTENTION,
    TABLE_CA,
    TABLE_CONFIG,
    StateViews,
    get_entry,
)
from registry.fsm import CommandError
from registry.intentions import decide


def _tables(log: Log) -> tuple[int, dict]:
    import copy

    return log.store.index, copy.deepcopy(log.store.tables)


def test_ca_set_bootstraps_once_and_stamps_indexes(log: Log) -> None:
    state = init_ca(log)
    views = StateViews()
    stored = views.ca(log.store)
    assert stored is not None and stored.trust_domain == state.trust_domain
    root = stored.active_root
    assert (root.create_index, root.modify_index) == (1, 1)
    assert (stored.config_create_index, stored.config_modify_index) == (1, 1)
    # A second bootstrap (another leader racing) is refused by the Prev check, and changes nothing.
    other = provider.initialize("99999999-2222-4333-8444-555555555555", provider.CAConfig(), START, os.urandom)
    before = _tables(log)
    assert log.apply({"Type": CMD_CA_SET, "State": provider.to_msgpack_dict(other), "Prev": 0}) is False
    assert _tables(log)[1] == before[1]


def test_ca_rotation_keeps_unchanged_indexes_and_refuses_stale_prev(log: Log) -> None:
    state = init_ca(log)
    rotated = provider.rotate(state, provider.CAConfig(private_key_type="ec", private_key_bits=384), START,
                              os.urandom)  # fmt: skip
    assert log.apply({"Type": CMD_CA_SET, "State": provider.to_msgpack_dict(rotated), "Prev": 1}) is True
    stored = StateViews().ca(log.store)
    assert stored is not None
    old = next(r for r in stored.roots if not r.active)
    new = stored.active_root
    assert (old.create_index, old.modify_index) == (1, 2)  # it changed: inactive now
    assert (new.create_index, new.modify_index) == (2, 2)
    assert stored.config_modify_index == 2
    # A change computed from the state before the rotation is refused.
    stale = provider.update_config(state, provider.CAConfig(leaf_cert_ttl="24h"), START, os.urandom)
    assert log.apply({"Type": CMD_CA_SET, "State": provider.to_msgpack_dict(stale), "Prev": 1}) is False
    assert StateViews().ca(log.store).config.leaf_cert_ttl == "72h"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d.pop("roots"), "invalid CA state"),
        (lambda d: d.update(v=99), "invalid CA state"),
        (lambda d: d["roots"][0].update(id="00:11"), "invalid CA state"),
        (lambda d: d["roots"][0].update(private_key_pem=""), "invalid CA state"),
        (lambda d: d.update(cluster_id="aaaaaaaa-2222-4333-8444-555555555555"), "invalid CA state"),
    ],
)
def test_ca_set_refuses_malformed_state(log: Log, mutate, message: str) -> None:  # noqa: ANN001
    state = provider.initialize(CLUSTER_ID, provider.CAConfig(), START, os.urandom)
    data = provider.to_msgpack_dict(state)
    mutate(data)
    result = log.apply({"Type": CMD_CA_SET, "State": data, "Prev": 0})
    assert isinstance(result, CommandError) and message in result.message
    assert TABLE_CA not in log.store.tables


def test_ca_cluster_id_cannot_change(log: Log) -> None:
    init_ca(log)
    other = provider.initialize("99999999-2222-4333-8444-555555555555", provider.CAConfig(), START, os.urandom)
    result = log.apply({"Type": CMD_CA_SET, "State": provider.to_msgpack_dict(other), "Prev": 1})
    assert isinstance(result, CommandError) and "cluster ID cannot change" in result.message


def test_snapshot_restore_keeps_ca_and_intentions(log: Log) -> None:
    state = init_ca(log)
    assert log.apply({"Type": CMD_INTENTION, "Op": "create", "ID": "a-1", "Now": "2026-06-01T12:00:00Z",
                      "Intention": {"SourceName": "web", "DestinationName": "db", "Action": "deny"}}) == "a-1"  # fmt: skip
    snap = log.fsm.snapshot()
    fresh = Log()
    fresh.fsm.restore(snap)
    views = StateViews()
    restored = views.ca(fresh.store)
    assert restored is not None and restored.active_root.id == state.active_root.id
    assert restored.active_root.private_key_pem == state.active_root.private_key_pem
    assert not decide(views.intentions(fresh.store), "web", "db", True).allowed


def entry(name: str, *sources: tuple[str, str]) -> dict:
    return {"Kind": "service-intentions", "Name": name,
            "Sources": [{"Name": s, "Action": a} for s, a in sources]}  # fmt: skip


def test_config_entry_upsert_cas_delete(log: Log) -> None:
    assert log.apply({"Type": CMD_CONFIG_ENTRY, "Op": "upsert", "Entry": entry("db", ("web", "allow"))}) is True
    row = get_entry(log.store, "service-intentions", "db")
    assert row is not None and (row["CreateIndex"], row["ModifyIndex"]) == (1, 1)
    assert row["Sources"][0]["Precedence"] == 9 and row["Sources"][0]["Type"] == "consul"
    # CAS with the wrong index loses, with the right one wins.
    assert log.apply({"Type": CMD_CONFIG_ENTRY, "Op": "cas", "Index": 7, "Entry": entry("db", ("*", "deny"))}) is False
    assert log.apply({"Type": CMD_CONFIG_ENTRY, "Op": "cas", "Index": 1, "Entry": entry("db", ("*", "deny"))}) is True
    row = get_entry(log.store, "service-intentions", "db")
    assert row["Sources"] == [{"Name": "*", "Action": "deny", "Type": "consul", "Precedence": 8}]
    assert (row["CreateIndex"], row["ModifyIndex"]) == (1, 3)
    # CAS delete with index 0 never deletes; the right index does.
    assert log.apply({"Type": CMD_CONFIG_ENTRY, "Op": "delete-cas", "Kind": "service-intentions", "Name": "db",
                      "Index": 0}) is False  # fmt: skip
    assert log.apply({"Type": CMD_CONFIG_ENTRY, "Op": "delete-cas", "Kind": "service-intentions", "Name": "db",
                      "Index": 3}) is True  # fmt: skip
    assert get_entry(log.store, "service-intentions", "db") is None


@pytest.mark.parametrize(
    "bad, words",
    [
        ({"Kind": "service-intentions", "Name": "db", "Sources": []}, "At least one source"),
        (entry("db", ("web", "maybe")), "Action must be set to 'allow' or 'deny'"),
        (entry("db", ("web", "allow"), ("WEB", "deny")), "more than once"),
        (entry("d*b", ("web", "allow")), "wildcard"),
        ({"Kind": "ingress-gateway", "Name": "db"}, "not supported"),
        # The FSM checks what the API checks, so a command that skipped the API is refused the same way.
        ({"Kind": "service-splitter", "Name": "db", "Splits": [{"Weight": 100}]},
         'discovery chain "db" uses a protocol "tcp" that does not permit advanced routing or splitting behavior'),
        ({"Kind": "service-defaults", "Name": "db", "Protocl": "http"}, 'invalid config key "Protocl"'),
        ({"Name": "db"}, "Kind"),
        ("not a map", "JSON object"),
        ({"Kind": "service-intentions", "Name": 5, "Sources": [{"Name": "web", "Action": "allow"}]},
         "Name must be a string"),
        ({"Kind": "service-intentions", "Name": "db", "Sources": "web"}, "Sources must be a list"),
        ({"Kind": "service-intentions", "Name": "db", "Sources": [{"Name": ["web"], "Action": "allow"}]},
         "Sources[0].Name must be a string"),
        ({"Kind": "service-intentions", "Name": "db",
          "Sources": [{"Name": "web", "Action": "allow", "LegacyID": "x", "LegacyMeta": ["a"]}]},
         "LegacyMeta must be an object"),
        ({"Kind": "service-intentions", "Name": "db", "Meta": {"a": 1},
          "Sources": [{"Name": "web", "Action": "allow"}]}, "Meta must be a map of strings"),
        ({"Kind": "service-intentions", "Name": "db", "Sources": [{"Name": "web", "Permissions": ["GET"]}]},
         "Permissions must be a list of objects"),
    ],
)
def test_config_entry_refusals_store_nothing(log: Log, bad: object, words: str) -> None:
    result = log.apply({"Type": CMD_CONFIG_ENTRY, "Op": "upsert", "Entry": bad})
    assert isinstance(result, CommandError) and words in result.message
    assert TABLE_CONFIG not in log.store.tables


def test_legacy_intention_lifecycle(log: Log) -> None:
    now = "2026-06-01T12:00:00Z"
    web_db = {"SourceName": "web", "DestinationName": "db", "Action": "allow", "Meta": {"owner": "team-a"}}
    assert log.apply({"Type": CMD_INTENTION, "Op": "create", "ID": "id-1", "Intention": web_db, "Now": now}) == "id-1"
    # The same pair again, even spelled differently, is a duplicate.
    dup = log.apply({"Type": CMD_INTENTION, "Op": "create", "ID": "id-2", "Now": now,
                     "Intention": {**web_db, "SourceName": "WEB"}})  # fmt: skip
    assert isinstance(dup, CommandError) and "duplicate intention found" in dup.message
    views = StateViews()
    [ixn] = views.intention_list(log.store)
    assert (ixn.id, dict(ixn.meta), ixn.precedence) == ("id-1", {"owner": "team-a"}, 9)
    # Move it to another destination by ID: the old entry disappears, the new one holds it.
    moved = {"SourceName": "web", "DestinationName": "cache", "Action": "deny"}
    assert log.apply({"Type": CMD_INTENTION, "Op": "update", "ID": "id-1", "Intention": moved,
                      "Now": "2026-06-02T12:00:00Z"}) is True  # fmt: skip
    assert get_entry(log.store, "service-intentions", "db") is None
    [ixn] = views.intention_list(log.store)
    assert (ixn.destination_name, ixn.action, ixn.id) == ("cache", "deny", "id-1")
    assert ixn.created_at is not None and ixn.updated_at is not None and ixn.updated_at > ixn.created_at
    missing = log.apply({"Type": CMD_INTENTION, "Op": "update", "ID": "nope", "Intention": moved, "Now": now})
    assert isinstance(missing, CommandError) and "non-existent" in missing.message
    assert log.apply({"Type": CMD_INTENTION, "Op": "delete", "ID": "id-1", "Now": now}) is True
    assert views.intention_list(log.store) == []


def test_exact_upsert_keeps_legacy_id_and_delete_exact(log: Log) -> None:
    now = "2026-06-01T12:00:00Z"
    log.apply({"Type": CMD_INTENTION, "Op": "create", "ID": "id-1", "Now": now,
               "Intention": {"SourceName": "web", "DestinationName": "db", "Action": "allow"}})  # fmt: skip
    assert log.apply({"Type": CMD_INTENTION, "Op": "upsert", "Now": "2026-06-03T00:00:00Z",
                      "Intention": {"SourceName": "web", "DestinationName": "db", "Action": "deny"}}) is True  # fmt: skip
    [ixn] = StateViews().intention_list(log.store)
    assert (ixn.id, ixn.action) == ("id-1", "deny")
    assert log.apply({"Type": CMD_INTENTION, "Op": "delete-exact", "Now": now,
                      "Intention": {"SourceName": "web", "DestinationName": "db"}}) is True  # fmt: skip
    assert StateViews().intention_list(log.store) == []
    # Deleting what is not there is a no-op, not an error.
    assert log.apply({"Type": CMD_INTENTION, "Op": "delete-exact", "Now": now,
                      "Intention": {"SourceName": "web", "DestinationName": "db"}}) is True  # fmt: skip


def test_views_rebuild_only_on_change(log: Log) -> None:
    views = StateViews()
    init_ca(log)
    first = views.ca(log.store)
    assert views.ca(log.store) is first
    idx1 = views.intentions(log.store)
    assert views.intentions(log.store) is idx1
    log.apply({"Type": CMD_CONFIG_ENTRY, "Op": "upsert", "Entry": entry("db", ("web", "deny"))})
    idx2 = views.intentions(log.store)
    assert idx2 is not idx1 and len(idx2) == 1
