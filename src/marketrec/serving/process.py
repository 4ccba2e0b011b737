"""`marketrec serve` as a child process: on a free port, in its own process group (granian's
workers included), its output in a file (a pipe nobody reads would fill and block it).
Used by `marketrec simulate` to serve each arm under test."""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from marketrec.core.errors import ConfigError


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServiceProcess:
    def __init__(self, model: Path, args: list[str], output: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.output = output
        command = [sys.executable, "-m", "marketrec.cli", "serve", str(model)]
        command += ["--port", str(self.port), *args]
        output.parent.mkdir(parents=True, exist_ok=True)
        with output.open("ab") as sink:
            self.process = subprocess.Popen(
                command,
                stdout=sink,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
                start_new_session=True,
            )

    def wait_ready(self, timeout: float = 180.0) -> None:
        """Until `/readyz` answers 200; `ConfigError` with the server's output if it exits
        or is not ready in time."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ConfigError(
                    f"marketrec serve exited with {self.process.returncode}: {self.log()}"
                )
            connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=1.0)
            try:
                connection.request("GET", "/readyz")
                if connection.getresponse().status == 200:
                    return
            except OSError:
                pass
            finally:
                connection.close()
            time.sleep(0.1)
        raise ConfigError(f"marketrec serve not ready after {timeout:.0f} s: {self.log()}")

    def kill(self) -> None:
        """`kill -9` of the server and its workers, at once."""
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGINT)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.kill()

    def log(self, tail: int | None = 2000) -> str:
        """The server's output (its last `tail` characters; None: all of it)."""
        text = self.output.read_text(errors="replace") if self.output.exists() else ""
        return text if tail is None else text[-tail:]
