"""Consul's agent configuration keys, as data: which key is a value, a block, a list of blocks or a map
whose keys are the user's (agent/config/config.go, the ``mapstructure`` tags of ``Config`` and the types
it nests). ``registry.config_files`` checks every file against this tree the way Consul's decoder does:
a key that is not here is ``invalid config key <path>``.

A few keys are Proconsul's own and are marked so (``nodes``, ``insecure``, ``default_intention_policy``,
``limits.http_read_timeout``); deprecated keys that Consul still reads are here too, with the key that
replaces them (``DEPRECATED``), because Consul accepts them with a warning.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Union

VALUE = "value"  # a scalar, or a list of scalars
MAP = "map"  # a map whose keys are the user's (node_meta, meta, ca_config); values kept as written
ANY = "any"  # opaque data (a config entry): kept as written, single blocks unwrapped
ANY_LIST = "any-list"  # a list of opaque maps (``watches``): one block is a list of one, as Consul's slice of maps


@dataclass(frozen=True)
class Block:
    """One struct of Consul's config: its fields, and the older spellings (``alias`` tags) it accepts."""

    fields: Mapping[str, Kind]
    aliases: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Blocks:
    """A list of blocks (``services``, ``checks``, ``upstreams``): HCL's repeated blocks, JSON's arrays."""

    item: Block


@dataclass(frozen=True)
class MapOf:
    """A map from the user's names to blocks (``tagged_addresses``, ``audit.sink``, Proconsul's ``nodes``)."""

    item: Block


Kind = Union[str, Block, Blocks, MapOf]  # noqa: UP007 - a runtime alias


def _values(*names: str) -> dict[str, Kind]:
    return dict.fromkeys(names, VALUE)


_CHECK = Block(
    {
        **_values("id", "name", "notes", "service_id", "token", "status", "args", "http", "method", "body",
                  "disable_redirects", "output_max_size", "tcp", "udp", "interval", "docker_container_id",
                  "shell", "grpc", "grpc_use_tls", "tls_server_name", "tls_skip_verify", "alias_node",
                  "alias_service", "timeout", "ttl", "h2ping", "h2ping_use_tls", "os_service",
                  "success_before_passing", "failures_before_warning", "failures_before_critical",
                  "deregister_critical_service_after", "namespace", "partition"),  # fmt: skip
        "header": MAP,
    },
    aliases={"serviceid": "service_id", "scriptargs": "args", "dockercontainerid": "docker_container_id",
             "tlsskipverify": "tls_skip_verify",
             "deregistercriticalserviceafter": "deregister_critical_service_after"},  # fmt: skip
)

_MESH_GATEWAY = Block(_values("mode"))
_UPSTREAM = Block({
    **_values("destination_type", "destination_namespace", "destination_partition", "destination_peer",
              "destination_name", "datacenter", "local_bind_address", "local_bind_port",
              "local_bind_socket_path", "local_bind_socket_mode"),
    "config": MAP,
    "mesh_gateway": _MESH_GATEWAY,
})  # fmt: skip
_EXPOSE = Block({**_values("checks", "port"),
                 "paths": Blocks(Block(_values("listener_port", "path", "protocol", "local_path_port")))})  # fmt: skip
_PROXY = Block({
    **_values("destination_service_name", "destination_service_id", "local_service_address", "local_service_port",
              "local_service_socket_path", "mode"),
    "transparent_proxy": Block(_values("outbound_listener_port", "dialed_directly")),
    "config": MAP,
    "upstreams": Blocks(_UPSTREAM),
    "mesh_gateway": _MESH_GATEWAY,
    "expose": _EXPOSE,
})  # fmt: skip

_SERVICE_FIELDS: dict[str, Kind] = {
    **_values("kind", "id", "name", "tags", "address", "port", "socket_path", "token", "enable_tag_override",
              "namespace", "partition"),
    "tagged_addresses": MapOf(Block(_values("address", "port"))),
    "meta": MAP,
    "check": _CHECK,
    "checks": Blocks(_CHECK),
    "weights": Block(_values("passing", "warning")),
    "proxy": _PROXY,
    "locality": Block(_values("region", "zone")),
}  # fmt: skip
_SIDECAR = Block(dict(_SERVICE_FIELDS))
_SERVICE_FIELDS["connect"] = Block({"native": VALUE, "sidecar_service": _SIDECAR})
_SIDECAR.fields["connect"] = Block({"native": VALUE})  # type: ignore[index]
SERVICE = Block(_SERVICE_FIELDS)
CHECK = _CHECK

_TLS_PROTOCOL = Block(_values("ca_file", "ca_path", "cert_file", "key_file", "tls_min_version", "tls_cipher_suites",
                              "verify_incoming", "verify_outgoing", "verify_server_hostname", "use_auto_cert"))  # fmt: skip
_GOSSIP = Block(_values("gossip_nodes", "gossip_interval", "probe_interval", "probe_timeout", "suspicion_mult",
                        "retransmit_mult"))  # fmt: skip

# Deprecated top-level keys Consul still reads (agent/config/deprecated.go): key -> the key that replaces it.
DEPRECATED: Mapping[str, str] = {
    "acl_agent_master_token": "acl.tokens.agent_recovery",
    "acl_agent_token": "acl.tokens.agent",
    "acl_token": "acl.tokens.default",
    "acl_enable_key_list_policy": "acl.enable_key_list_policy",
    "acl_master_token": "acl.tokens.initial_management",
    "acl_replication_token": "acl.tokens.replication",
    "enable_acl_replication": "acl.enable_token_replication",
    "acl_datacenter": "primary_datacenter",
    "acl_default_policy": "acl.default_policy",
    "acl_down_policy": "acl.down_policy",
    "acl_ttl": "acl.token_ttl",
    "ca_file": "tls.defaults.ca_file",
    "ca_path": "tls.defaults.ca_path",
    "cert_file": "tls.defaults.cert_file",
    "key_file": "tls.defaults.key_file",
    "tls_cipher_suites": "tls.defaults.tls_cipher_suites",
    "tls_min_version": "tls.defaults.tls_min_version",
    "verify_incoming": "tls.defaults.verify_incoming",
    "verify_incoming_https": "tls.https.verify_incoming",
    "verify_incoming_rpc": "tls.internal_rpc.verify_incoming",
    "verify_outgoing": "tls.defaults.verify_outgoing",
    "verify_server_hostname": "tls.internal_rpc.verify_server_hostname",
    "start_join": "retry_join",
    "start_join_wan": "retry_join_wan",
    "raft_boltdb": "raft_logstore.boltdb",
}
DEPRECATED_IGNORED = ("tls_prefer_server_cipher_suites",)
DEPRECATED_NESTED: Mapping[str, str] = {"acl.tokens.master": "acl.tokens.initial_management",
                                        "acl.tokens.agent_master": "acl.tokens.agent_recovery"}  # fmt: skip

# Proconsul's own keys (none of them in Consul's files).
PROCONSUL_KEYS = ("nodes", "insecure", "default_intention_policy")

_TOP_FIELDS: dict[str, Kind] = {
    **_values(
        "advertise_addr", "advertise_addr_ipv4", "advertise_addr_ipv6", "advertise_addr_wan", "advertise_addr_wan_ipv4",
        "advertise_addr_wan_ipv6", "advertise_reconnect_timeout", "bind_addr", "bootstrap", "bootstrap_expect",
        "check_output_max_size", "check_update_interval", "client_addr", "domain", "alt_domain", "recursors",
        "data_dir", "datacenter", "default_query_time", "disable_anonymous_signature", "disable_coordinates",
        "disable_host_node_id", "disable_http_unprintable_char_filter", "disable_keyring_file", "disable_remote_exec",
        "disable_update_check", "discard_check_output", "discovery_max_stale", "enable_agent_tls_for_checks",
        "enable_central_service_config", "enable_debug", "enable_script_checks", "enable_local_script_checks",
        "enable_syslog", "encrypt", "encrypt_verify_incoming", "encrypt_verify_outgoing", "leave_on_terminate",
        "license_path", "log_level", "log_json", "log_file", "log_rotate_duration", "log_rotate_bytes",
        "log_rotate_max_files", "max_query_time", "node_id", "node_name", "pid_file", "primary_datacenter",
        "primary_gateways", "primary_gateways_interval", "protocol", "raft_protocol", "raft_snapshot_threshold",
        "raft_snapshot_interval", "raft_trailing_logs", "reconnect_timeout", "reconnect_timeout_wan",
        "rejoin_after_leave", "auto_reload_config", "retry_interval", "retry_interval_wan", "retry_join",
        "retry_max", "retry_max_wan", "retry_join_wan", "serf_lan_allowed_cidrs", "serf_wan_allowed_cidrs",
        "serf_lan", "serf_wan", "server", "server_name", "session_ttl_min", "skip_leave_on_interrupt",
        "syslog_facility", "translate_wan_addrs", "ui", "ui_content_path", "ui_dir", "use_streaming_backend",
        "ae_interval", "check_deregister_interval_min", "check_reap_interval", "revision", "segment_limit",
        "segment_name_limit", "sync_coordinate_interval_min", "sync_coordinate_rate_target", "version",
        "version_prerelease", "version_metadata", "build_date", "read_replica", "segment", "partition",
        "license_poll_base_time", "license_poll_max_time", "license_update_base_time", "license_update_max_time",
        *DEPRECATED, *DEPRECATED_IGNORED, "insecure", "default_intention_policy",
    ),
    "acl": Block({
        **_values("enabled", "enable_token_replication", "policy_ttl", "role_ttl", "token_ttl", "down_policy",
                  "default_policy", "enable_key_list_policy", "enable_token_persistence", "msp_disable_bootstrap"),
        "tokens": Block({
            **_values("initial_management", "replication", "agent_recovery", "default", "agent",
                      "config_file_service_registration", "master", "agent_master"),
            "managed_service_provider": Blocks(Block(_values("accessor_id", "secret_id"))),
        }),
    }),
    "addresses": Block(_values("dns", "http", "https", "grpc", "grpc_tls")),
    "auto_config": Block({
        **_values("enabled", "intro_token", "intro_token_file", "server_addresses", "dns_sans", "ip_sans"),
        "authorization": Block({"enabled": VALUE, "static": Block({
            **_values("claim_assertions", "allow_reuse", "jwt_supported_algs", "bound_audiences",
                      "oidc_discovery_url", "oidc_discovery_ca_cert", "jwks_url", "jwks_ca_cert",
                      "jwt_validation_pub_keys", "bound_issuer", "expiration_leeway", "not_before_leeway",
                      "clock_skew_leeway"),
            "claim_mappings": MAP, "list_claim_mappings": MAP})}),
    }),
    "autopilot": Block(_values("cleanup_dead_servers", "last_contact_threshold", "max_trailing_logs", "min_quorum",
                               "server_stabilization_time", "disable_upgrade_migration", "redundancy_zone_tag",
                               "upgrade_version_tag")),
    "cache": Block(_values("entry_fetch_max_burst", "entry_fetch_rate")),
    "check": CHECK,
    "checks": Blocks(CHECK),
    "cloud": Block(_values("resource_id", "client_id", "client_secret", "hostname", "auth_url", "scada_address")),
    "config_entries": Block({"bootstrap": ANY}),
    "auto_encrypt": Block(_values("tls", "dns_san", "ip_san", "allow_tls")),
    "connect": Block({**_values("enabled", "ca_provider", "enable_mesh_gateway_wan_federation",
                                "test_ca_leaf_root_change_spread"), "ca_config": MAP}),
    "dns_config": Block({
        **_values("allow_stale", "a_record_limit", "disable_compression", "enable_truncate", "max_stale", "node_ttl",
                  "only_passing", "recursor_strategy", "recursor_timeout", "udp_answer_limit",
                  "enable_additional_node_meta_txt", "use_cache", "cache_max_age", "prefer_namespace"),
        "service_ttl": MAP,
        "soa": Block(_values("refresh", "retry", "expire", "min_ttl")),
    }),
    "gossip_lan": _GOSSIP,
    "gossip_wan": _GOSSIP,
    "http_config": Block({**_values("block_endpoints", "allow_write_http_from", "use_cache", "max_header_bytes"),
                          "response_headers": MAP}),
    "limits": Block({
        **_values("http_max_conns_per_client", "https_handshake_timeout", "rpc_client_timeout",
                  "rpc_handshake_timeout", "rpc_max_burst", "rpc_max_conns_per_client", "rpc_rate",
                  "kv_max_value_size", "txn_max_req_len", "http_read_timeout"),
        "request_limits": Block(_values("mode", "read_rate", "write_rate")),
    }),
    "locality": Block(_values("region", "zone")),
    "log_sublevels": MAP,
    "node_meta": MAP,
    "peering": Block(_values("enabled", "test_allow_peer_registrations")),
    "performance": Block(_values("leave_drain_time", "raft_multiplier", "rpc_hold_timeout")),
    "ports": Block(_values("dns", "http", "https", "serf_lan", "serf_wan", "server", "grpc", "grpc_tls",
                           "proxy_min_port", "proxy_max_port", "sidecar_min_port", "sidecar_max_port",
                           "expose_min_port", "expose_max_port")),
    "service": SERVICE,
    "services": Blocks(SERVICE),
    "tls": Block({"defaults": _TLS_PROTOCOL, "internal_rpc": _TLS_PROTOCOL, "https": _TLS_PROTOCOL,
                  "grpc": _TLS_PROTOCOL}),
    "tagged_addresses": MAP,
    "telemetry": Block(_values(
        "circonus_api_app", "circonus_api_token", "circonus_api_url", "circonus_broker_id",
        "circonus_broker_select_tag", "circonus_check_display_name", "circonus_check_force_metric_activation",
        "circonus_check_id", "circonus_check_instance_id", "circonus_check_search_tag", "circonus_check_tags",
        "circonus_submission_interval", "circonus_submission_url", "disable_hostname", "dogstatsd_addr",
        "dogstatsd_tags", "retry_failed_connection", "filter_default", "prefix_filter", "metrics_prefix",
        "prometheus_retention_time", "statsd_address", "statsite_address", "disable_per_tenancy_usage_metrics",
        "enable_host_metrics")),
    "xds": Block(_values("update_max_per_second")),
    "ui_config": Block({
        **_values("enabled", "dir", "content_path", "metrics_provider", "metrics_provider_files",
                  "metrics_provider_options_json"),
        "metrics_proxy": Block({"base_url": VALUE, "path_allowlist": VALUE,
                                "add_headers": Blocks(Block(_values("name", "value")))}),
        "dashboard_url_templates": MAP,
    }),
    "unix_sockets": Block(_values("group", "mode", "user")),
    "watches": ANY_LIST,
    "rpc": Block(_values("enable_streaming")),
    "raft_logstore": Block({**_values("backend", "disable_log_cache"),
                            "verification": Block(_values("enabled", "interval")),
                            "boltdb": Block(_values("no_freelist_sync")),
                            "wal": Block(_values("segment_size_mb"))}),
    "snapshot_agent": ANY,
    "consul": Block({
        "coordinate": Block(_values("update_batch_size", "update_max_batches", "update_period")),
        "raft": Block(_values("election_timeout", "heartbeat_timeout", "leader_lease_timeout")),
        "server": Block(_values("health_interval")),
    }),
    "audit": Block({"enabled": VALUE, "sink": MapOf(Block(_values(
        "type", "format", "path", "delivery_guarantee", "mode", "rotate_bytes", "rotate_duration", "rotate_max_files",
        "name")))}),
    "segments": Blocks(Block(_values("advertise", "bind", "name", "port", "rpc_listener"))),
    "reporting": Block({"license": Block(_values("enabled"))}),
}  # fmt: skip
TOP = Block(_TOP_FIELDS, aliases={"non_voting_server": "read_replica"})
# Proconsul's per-node sections: each one holds top-level keys.
_TOP_FIELDS["nodes"] = MapOf(TOP)
