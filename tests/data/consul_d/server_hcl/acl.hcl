acl {
  enabled                  = true
  default_policy           = "deny"
  enable_token_persistence = true

  tokens {
    agent   = "8f1e2d3c-0000-4000-8000-000000000001"
    default = "8f1e2d3c-0000-4000-8000-000000000002"
  }
}
