service {
  name                = "web"
  id                  = "web-1"
  tags                = ["v1", "primary"]
  port                = 8080
  enable_tag_override = true

  meta {
    version = "1.0"
  }

  check {
    id       = "web-http"
    name     = "HTTP on 8080"
    http     = "http://127.0.0.1:8080/health"
    method   = "GET"
    interval = "10s"
    timeout  = "1s"
  }

  checks = [
    {
      id       = "web-tcp"
      name     = "TCP on 8080"
      tcp      = "127.0.0.1:8080"
      interval = "10s"
    },
    {
      id  = "web-ttl"
      ttl = "30s"
    }
  ]
}
