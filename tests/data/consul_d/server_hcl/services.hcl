services {
  name = "db"
  port = 5432
  tags = ["primary"]
  check {
    tcp      = "127.0.0.1:5432"
    interval = "15s"
  }
}

services {
  name = "cache"
  port = 6379
  weights {
    passing = 5
    warning = 1
  }
}
