telemetry {
  prometheus_retention_time = "60s"
  disable_hostname          = true
}
