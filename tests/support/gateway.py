"""Running a real mcp-hub gateway process for tests."""

from __future__ import annotations

import contextlib
import copy
import hashlib
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import yaml

from tests.support.processes import running, wait_for_http
from tests.support.tools import ROOT, free_port, node22_env

# Every test gateway gets this scrape key (admin.scrape_keys), so tests read /healthz detail and /metrics
# whatever auth the config sets; tests of the unauthenticated answers simply leave the header out.
SCRAPE_KEY = "test-scrape-key-0123456789"
SCRAPE_HEADERS = {"Authorization": f"Bearer {SCRAPE_KEY}"}
_SCRAPE_ENTRY = {"name": "tests", "sha256": hashlib.sha256(SCRAPE_KEY.encode()).hexdigest()}


def with_scrape_key(config: dict[str, Any] | str) -> str:
    """The config as YAML text, with the tests' scrape key added."""
    if isinstance(config, str):
        # text is kept byte for byte (tests of duplicate keys, anchors, ${VAR}); a top-level admin: block
        # of its own is left alone
        if any(line.startswith("admin:") for line in config.splitlines()):
            return config
        entry = f"{{name: {_SCRAPE_ENTRY['name']}, sha256: {_SCRAPE_ENTRY['sha256']}}}"
        return config.rstrip("\n") + f"\nadmin:\n  scrape_keys: [{entry}]\n"
    data = copy.deepcopy(config)
    admin = data.get("admin")
    if admin is None:
        admin = data["admin"] = {}
    if isinstance(admin, dict):
        keys = admin.setdefault("scrape_keys", [])
        if isinstance(keys, list) and _SCRAPE_ENTRY not in keys:
            keys.append(_SCRAPE_ENTRY)
    return yaml.safe_dump(data, sort_keys=False)


@dataclass
class RunningGateway:
    url: str  # base URL, e.g. http://127.0.0.1:PORT
    port: int
    log: Path
    proc: Any
    config_path: Path

    @property
    def mcp(self) -> str:
        return f"{self.url}/mcp"

    def health(self) -> dict[str, Any]:
        """/healthz in detail (read with the scrape key every test gateway is given)."""
        return httpx2.get(f"{self.url}/healthz", headers=SCRAPE_HEADERS, timeout=5).json()

    def metrics(self) -> str:
        response = httpx2.get(f"{self.url}/metrics", headers=SCRAPE_HEADERS, timeout=5)
        response.raise_for_status()
        return response.text

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def gateway_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """PATH with Node 22, the npm tools and the venv's scripts (mcp-server-time) first."""
    env = node22_env(extra)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env["PATH"]])
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return env


@contextlib.contextmanager
def run_gateway(
    config: dict[str, Any] | str,
    tmp_path: Path,
    *,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    args: list[str] | None = None,
    wait_healthy: bool = False,
    name: str = "gateway",
    port: int | None = None,
) -> Iterator[RunningGateway]:
    """Write `config` to a file and run `mcp-hub serve` on a free port until the block ends."""
    port = port or free_port()
    config_path = tmp_path / f"{name}.yaml"
    config_path.write_text(with_scrape_key(config))
    log = tmp_path / f"{name}.log"
    cmd = [sys.executable, "-m", "mcp_hub.cli", "serve", "--config", str(config_path), "--port", str(port),
           *(args or [])]
    with running(cmd, env=gateway_env(env), cwd=cwd or ROOT, log=log) as proc:
        url = f"http://127.0.0.1:{port}"
        try:
            wait_for_http(f"{url}/healthz", timeout=60, proc=proc)
        except Exception as exc:
            raise RuntimeError(f"gateway did not start: {exc}\n--- log ---\n{log.read_text(errors='replace')}") from exc
        gw = RunningGateway(url=url, port=port, log=log, proc=proc, config_path=config_path)
        if wait_healthy:
            wait_until(lambda: gw.health()["status"] == "ok", timeout=60, what="all upstreams up")
        yield gw


def wait_until(predicate: Any, *, timeout: float = 20.0, interval: float = 0.1, what: str = "condition") -> None:
    import time

    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except Exception as exc:  # noqa: BLE001 - retried until the deadline
            last_exc = exc
        time.sleep(interval)
    raise TimeoutError(f"timed out waiting for {what}" + (f": {last_exc}" if last_exc else ""))


def python_server(module: str, *args: str) -> dict[str, Any]:
    """A stdio upstream entry running a test server module with this interpreter."""
    return {"transport": "stdio", "command": sys.executable, "args": ["-m", module, *args],
            "env": {"PYTHONPATH": str(ROOT)}}
