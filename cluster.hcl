# The cluster of cluster.yaml in HCL, Consul's own config language: a secure 3-server cluster on 127.0.0.1
# (ACLs on with default deny, mutual TLS on the server port). Same steps, same certificates:
#
#   proconsul tls ca create
#   proconsul tls cert create -server      # three times: dc1-server-consul-0, -1, -2
#   proconsul tls cert create -client      # dc1-client-consul-0
#
#   proconsul agent -config-file cluster.hcl -node server1     # and server2, server3 (client1 for a client)
#   proconsul acl bootstrap
#
# With Consul you would give each node its own directory of files (/etc/consul.d/*.hcl) holding the keys
# below plus that node's section; `proconsul agent -config-dir` reads such a directory the same way.
datacenter           = "dc1"
server               = true
bootstrap_expect     = 3
bind_addr            = "127.0.0.1"
client_addr          = "127.0.0.1"
retry_join           = ["127.0.0.1:8300", "127.0.0.1:8310", "127.0.0.1:8320"]
enable_script_checks = false
# The gossip encryption key, the same on every agent: replace it with the output of `proconsul keygen`.
encrypt              = "pUqJrVyVRj5jsiYEkM/tFQYfWyJIv4s3XkvDwy7Cu5s="

acl {
  enabled        = true
  default_policy = "deny"
}

tls {
  defaults {
    ca_file         = "consul-agent-ca.pem"
    verify_incoming = true
    verify_outgoing = true
  }
  internal_rpc {
    verify_server_hostname = true
  }
}

dns_config {
  only_passing     = false
  udp_answer_limit = 3
}

# Proconsul's one addition to Consul's keys: per-node sections, chosen with -node (merged into the keys
# above, down into nested blocks).
nodes {
  server1 {
    data_dir = "./data/server1"
    ports {
      server   = 8300
      http     = 8500
      dns      = 8600
      serf_lan = 8301
    }
    tls {
      defaults {
        cert_file = "dc1-server-consul-0.pem"
        key_file  = "dc1-server-consul-0-key.pem"
      }
    }
  }
  server2 {
    data_dir = "./data/server2"
    ports {
      server   = 8310
      http     = 8510
      dns      = 8610
      serf_lan = 8311
    }
    tls {
      defaults {
        cert_file = "dc1-server-consul-1.pem"
        key_file  = "dc1-server-consul-1-key.pem"
      }
    }
  }
  server3 {
    data_dir = "./data/server3"
    ports {
      server   = 8320
      http     = 8520
      dns      = 8620
      serf_lan = 8321
    }
    tls {
      defaults {
        cert_file = "dc1-server-consul-2.pem"
        key_file  = "dc1-server-consul-2-key.pem"
      }
    }
  }
  client1 {
    server           = false
    bootstrap_expect = 0
    data_dir         = "./data/client1"
    ports {
      http     = 8530
      dns      = 8630
      serf_lan = 8331
    }
    tls {
      defaults {
        cert_file = "dc1-client-consul-0.pem"
        key_file  = "dc1-client-consul-0-key.pem"
      }
    }
  }
}
