tls {
  defaults {
    ca_file         = "@PKI@/consul-agent-ca.pem"
    cert_file       = "@PKI@/dc1-server-consul-0.pem"
    key_file        = "@PKI@/dc1-server-consul-0-key.pem"
    verify_incoming = true
    verify_outgoing = true
  }

  internal_rpc {
    verify_server_hostname = true
  }

  https {
    verify_incoming = false
  }
}
