# /etc/consul.d/server.hcl
datacenter       = "dc1"
node_name        = "consul-server-1"
node_id          = "9c5b4a3e-1f0b-4c5d-8e2a-6b7c8d9e0f11"
data_dir         = "@DATA@"
server           = true
bootstrap_expect = 3
bind_addr        = "127.0.0.1"
client_addr      = "127.0.0.1"
retry_join       = ["127.0.0.1:8300", "127.0.0.1:8310", "127.0.0.1:8320"]
log_level        = "INFO"
encrypt          = "pUqJrVyVRj5jsiYEkM/tFQYfWyJIv4s3XkvDwy7Cu5s="

ports {
  grpc  = 8502
  https = 8501
  dns   = 8600
}

addresses {
  http = "127.0.0.1"
}

ui_config {
  enabled = true
}

node_meta {
  rack = "r1"
}

limits {
  http_max_conns_per_client = 300
}
