"""Server settings and their safe defaults."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

# Host names a loopback-bound server answers to. Checking the Host header stops DNS
# rebinding: a web page whose domain re-resolves to 127.0.0.1 would otherwise reach the
# server from the user's browser.
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"  # loopback: only this machine's apps can connect
    port: int = 8000  # 0 picks a free port (reported when the server is ready)
    api_key: str | None = None  # when set, /v1/* needs "Authorization: Bearer KEY" (401 otherwise)
    model_id: str | None = None  # default: the artifact's file (or directory) name without .gguf
    max_concurrent: int = 1  # generation slots = sessions loaded
    max_queue: int = 8  # requests that may wait for a slot; beyond that: 429
    queue_timeout_s: float = 30.0  # longest wait for a slot; then: 503
    max_request_bytes: int = 1 << 20  # larger bodies: 413
    max_tokens_limit: int = 2048  # largest max_tokens a request may ask for (and chat's default)
    shutdown_timeout_s: float = 10.0  # on SIGINT/SIGTERM, in-flight requests get this long, then are cut

    def __post_init__(self) -> None:
        from edgekit.errors import InputError

        for name, lo in (("max_concurrent", 1), ("max_queue", 0), ("max_request_bytes", 1024),
                         ("max_tokens_limit", 1), ("port", 0)):
            if getattr(self, name) < lo:
                raise InputError(f"{name} must be >= {lo}, got {getattr(self, name)}")
        if self.queue_timeout_s <= 0 or self.shutdown_timeout_s < 0:
            raise InputError("queue_timeout_s must be > 0 and shutdown_timeout_s >= 0")
        if self.api_key is not None and not self.api_key.strip():
            raise InputError("the API key is empty", hint="pass a non-empty --api-key / api_key= or leave it out")

    @property
    def loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False

    def allowed_hosts(self) -> frozenset[str] | None:
        """Host header names accepted (None: any, when bound beyond loopback on purpose)."""
        return LOOPBACK_NAMES if self.loopback else None
