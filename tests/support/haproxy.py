"""A real HAProxy (Debian's `haproxy`) in front of gateway replicas: plain round-robin, no stickiness.

`mode http` with `balance roundrobin` sends each request (not each connection) to the next server, so
one MCP session's POSTs and GET stream land on every replica in turn. `option redispatch` and
`retry-on conn-failure` send a request whose server refused the connection (a killed replica) to
another one; a request already sent to a replica that then dies is not retried (it may have run).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx2

from tests.support.processes import running, wait_for_port
from tests.support.tools import executable, free_port


def haproxy_config(port: int, servers: Sequence[tuple[str, int]], stats_port: int) -> str:
    lines = [
        "global",
        "    maxconn 4096",
        "    log stdout format raw local0",
        "defaults",
        "    mode http",
        "    log global",
        "    option httplog",
        "    timeout connect 2s",
        "    timeout client 120s",
        "    timeout server 120s",
        "    timeout http-keep-alive 10s",
        "    retries 3",
        "    option redispatch 1",
        "    retry-on conn-failure empty-response",
        "    option http-buffer-request",
        "frontend mcp",
        f"    bind 127.0.0.1:{port}",
        "    default_backend replicas",
        "backend replicas",
        "    balance roundrobin",
        "    http-reuse never",  # a pooled connection to a replica that died would fail the request sent on it
    ]
    for name, server_port in servers:
        lines.append(f"    server {name} 127.0.0.1:{server_port} check inter 500ms fall 2 rise 1")
    lines += [
        "frontend stats",
        f"    bind 127.0.0.1:{stats_port}",
        "    stats enable",
        "    stats uri /stats",
    ]
    return "\n".join(lines) + "\n"


@dataclass
class RunningHAProxy:
    url: str
    port: int
    stats_port: int
    log: Path

    def server_sessions(self) -> dict[str, int]:
        """Requests each server got (HAProxy's stats CSV, column `stot`)."""
        text = httpx2.get(f"http://127.0.0.1:{self.stats_port}/stats;csv", timeout=5).text
        header = text.splitlines()[0].lstrip("# ").split(",")
        out: dict[str, int] = {}
        for line in text.splitlines()[1:]:
            cells = line.split(",")
            if len(cells) < len(header):
                continue
            row = dict(zip(header, cells, strict=False))
            if row.get("pxname") == "replicas" and row.get("svname") not in ("FRONTEND", "BACKEND"):
                out[row["svname"]] = int(row.get("stot") or 0)
        return out


@contextlib.contextmanager
def run_haproxy(servers: Sequence[tuple[str, int]], tmp_path: Path) -> Iterator[RunningHAProxy]:
    """HAProxy on a free loopback port, balancing over `servers` ((name, port) pairs)."""
    binary = executable("haproxy")
    port, stats_port = free_port(), free_port()
    config = tmp_path / "haproxy.cfg"
    config.write_text(haproxy_config(port, servers, stats_port))
    log = tmp_path / "haproxy.log"
    with running([binary, "-f", str(config), "-db"], log=log) as proc:
        wait_for_port(port, proc=proc)
        yield RunningHAProxy(url=f"http://127.0.0.1:{port}", port=port, stats_port=stats_port, log=log)


_ADOPTED = re.compile(r"session (?P<sid>[0-9a-f]+) (?P<what>opened|adopted) on replica")


def sessions_in_log(text: str) -> dict[str, str]:
    """Session ids a replica's log says it opened or adopted: id -> 'opened' | 'adopted'."""
    return {m["sid"]: m["what"] for m in _ADOPTED.finditer(text)}
