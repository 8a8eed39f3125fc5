# /etc/proconsul.d/proconsul.hcl on server-1 (server-2 and server-3 differ in node_name, bind_addr and
# cert_file/key_file). Consul's keys, as Consul's docs write them.
datacenter = "dc1"
node_name  = "server-1"
data_dir   = "/var/lib/proconsul"

server           = true
bootstrap_expect = 3
bind_addr        = "10.0.0.11"
client_addr      = "127.0.0.1"
retry_join       = ["10.0.0.11", "10.0.0.12", "10.0.0.13"]
# The gossip encryption key, the same on every agent (docs/deploy.md step 1: proconsul keygen).
encrypt = "REPLACE_WITH_THE_OUTPUT_OF_proconsul_keygen"

# A server keeps its place in the Raft configuration when systemd stops it (Consul's default for servers).
leave_on_terminate = false

tls {
  defaults {
    ca_file         = "/etc/proconsul.d/tls/consul-agent-ca.pem"
    cert_file       = "/etc/proconsul.d/tls/dc1-server-consul-0.pem"
    key_file        = "/etc/proconsul.d/tls/dc1-server-consul-0-key.pem"
    verify_incoming = true
    verify_outgoing = true
  }
  internal_rpc {
    verify_server_hostname = true
  }
}

acl {
  enabled                  = true
  default_policy           = "deny"
  enable_token_persistence = true
}
