# /etc/proconsul.d/proconsul.hcl on a client agent (web-1 here).
datacenter = "dc1"
node_name  = "web-1"
data_dir   = "/var/lib/proconsul"

bind_addr   = "10.0.1.21"
client_addr = "127.0.0.1"
retry_join  = ["10.0.0.11", "10.0.0.12", "10.0.0.13"]
# The gossip encryption key, the same on every agent (docs/deploy.md step 1: proconsul keygen).
encrypt = "REPLACE_WITH_THE_OUTPUT_OF_proconsul_keygen"

# A client agent leaves the cluster when systemd stops it (Consul's default for client agents).
leave_on_terminate = true

tls {
  defaults {
    ca_file         = "/etc/proconsul.d/tls/consul-agent-ca.pem"
    cert_file       = "/etc/proconsul.d/tls/dc1-client-consul-0.pem"
    key_file        = "/etc/proconsul.d/tls/dc1-client-consul-0-key.pem"
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
  tokens {
    agent = "<the agent token made for web-1>"
  }
}

# Run a handler each time a deploy event reaches this agent.
watches = [
  {
    type = "event"
    name = "deploy"
    args = ["/usr/local/bin/on-deploy"]
  }
]
