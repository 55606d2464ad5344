"""Start the test servers as real processes: an HTTP/SSE server on a free port, or the command for stdio."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from subprocess import Popen
from typing import Literal

from tests.support.processes import running, wait_for_port
from tests.support.tools import ROOT, free_port

HttpTransport = Literal["streamable-http", "sse"]


@dataclass
class ServerProcess:
    url: str
    """`http://127.0.0.1:PORT/mcp` (Streamable HTTP) or `http://127.0.0.1:PORT/sse` (SSE)."""
    port: int
    proc: Popen[bytes]
    log: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def stdio_command(module: str, *args: str) -> list[str]:
    """`python -m tests.servers.MODULE --transport stdio ARGS` (run it with cwd=ROOT)."""
    return [sys.executable, "-m", f"tests.servers.{module}", "--transport", "stdio", *args]


@contextlib.contextmanager
def http_server(
    module: str, log_dir: Path, *args: str, transport: HttpTransport = "streamable-http", timeout: float = 30.0
) -> Iterator[ServerProcess]:
    """Run `tests.servers.MODULE` over HTTP on a free loopback port until the block ends."""
    port = free_port()
    log = log_dir / f"{module}-{transport}-{port}.log"
    cmd = [sys.executable, "-m", f"tests.servers.{module}", "--transport", transport, "--port", str(port), *args]
    with running(cmd, cwd=ROOT, log=log) as proc:
        try:
            wait_for_port(port, timeout=timeout, proc=proc)
        except Exception as exc:
            raise RuntimeError(f"{module} did not start: {exc}\n--- log ---\n{log.read_text(errors='replace')}") from exc
        path = "/sse" if transport == "sse" else "/mcp"
        yield ServerProcess(url=f"http://127.0.0.1:{port}{path}", port=port, proc=proc, log=log)
