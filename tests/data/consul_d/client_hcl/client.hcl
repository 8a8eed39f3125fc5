datacenter = "dc1"
node_name  = "consul-client-1"
node_id    = "9c5b4a3e-1f0b-4c5d-8e2a-6b7c8d9e0f22"
data_dir   = "@DATA@"
server     = false
bind_addr  = "127.0.0.1"
retry_join = ["127.0.0.1:8300"]
encrypt    = "pUqJrVyVRj5jsiYEkM/tFQYfWyJIv4s3XkvDwy7Cu5s="

ports {
  http = 8530
  dns  = -1
}

acl {
  enabled        = true
  default_policy = "deny"
  tokens {
    agent = "8f1e2d3c-0000-4000-8000-000000000003"
  }
}

tls {
  defaults {
    ca_file         = "@PKI@/consul-agent-ca.pem"
    cert_file       = "@PKI@/dc1-client-consul-0.pem"
    key_file        = "@PKI@/dc1-client-consul-0-key.pem"
    verify_incoming = true
    verify_outgoing = true
  }
  internal_rpc {
    verify_server_hostname = true
  }
}

service {
  name = "api"
  port = 9090
  checks = [
    {
      id       = "api-http"
      http     = "http://127.0.0.1:9090/ready"
      interval = "5s"
    },
    {
      id  = "api-ttl"
      ttl = "1m"
    }
  ]
}
