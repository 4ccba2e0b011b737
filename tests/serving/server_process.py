"""`marketrec serve` as a real process for the tests (`marketrec.serving.process`), failing
the test when it does not become ready."""

from __future__ import annotations

from marketrec.core.errors import ConfigError
from marketrec.serving.process import ServiceProcess, free_port

__all__ = ["ServerProcess", "free_port"]


class ServerProcess(ServiceProcess):
    def wait_ready(self, timeout: float = 60.0) -> None:
        try:
            super().wait_ready(timeout)
        except ConfigError as exc:
            raise AssertionError(str(exc)) from None

    def log(self, tail: int | None = 3000) -> str:
        return super().log(tail)
