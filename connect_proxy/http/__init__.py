"""The sidecar's HTTP mode: per-request routing (``routing``), L7 intentions (``rbac``), and the asyncio
data plane that applies them (``engine``)."""
