"""A `BROWSER` program for command-line OAuth clients (mcp-remote): it signs in at the test IdP headlessly.

mcp-remote opens the authorization URL with the `open` package, which on Linux runs its bundled `xdg-open`;
with no desktop session (no DISPLAY, no XDG_CURRENT_DESKTOP) `xdg-open` runs `$BROWSER URL`. This program
is that browser: it follows the IdP's login and consent forms like a user would (`tests.support.idp.login`),
then delivers the redirect, code included, to the client's loopback callback.

    env = browser_env(tmp_path, record=tmp_path / "browser.jsonl")   # BROWSER=<a wrapper> and friends
    # ... start the client with `env`; each URL it opens is recorded as one JSON line:
    # {"request": {authorization request parameters}, "callback": "http://localhost:PORT/...", "status": 200}

Run directly: `python -m tests.support.browser_login URL` (from the repository root), with
BROWSER_LOGIN_ACCOUNT (default alice) and BROWSER_LOGIN_RECORD (the JSON lines file, optional).
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx2

from tests.support.idp import login
from tests.support.tools import ROOT

# Variables that make xdg-open pick a desktop's opener instead of $BROWSER.
DESKTOP_VARIABLES = ("DISPLAY", "WAYLAND_DISPLAY", "XDG_CURRENT_DESKTOP", "XDG_SESSION_DESKTOP", "DESKTOP_SESSION",
                     "KDE_FULL_SESSION", "GNOME_DESKTOP_SESSION_ID", "MATE_DESKTOP_SESSION_ID",
                     "DBUS_SESSION_BUS_ADDRESS")


def browser_env(workdir: Path, *, record: Path, account: str = "alice") -> dict[str, str]:
    """Environment variables that make a client's "open the browser" run this program (merge them into
    an environment without the DESKTOP_VARIABLES)."""
    wrapper = workdir / "browser-login.sh"
    wrapper.write_text(
        "#!/bin/sh\n"
        f"cd {shlex.quote(str(ROOT))} || exit 1\n"
        f'exec {shlex.quote(sys.executable)} -m tests.support.browser_login "$1"\n'
    )
    wrapper.chmod(0o755)
    return {"BROWSER": str(wrapper), "BROWSER_LOGIN_RECORD": str(record), "BROWSER_LOGIN_ACCOUNT": account}


def sign_in(authorization_url: str, *, account: str) -> dict[str, object]:
    """Open `authorization_url`, log in and consent, and deliver the redirect to the client's callback."""
    request = {k: v[0] for k, v in parse_qs(urlsplit(authorization_url).query).items()}
    redirect_uri = request.get("redirect_uri", "")
    if not redirect_uri:
        raise SystemExit(f"browser_login: no redirect_uri in {authorization_url}")
    with httpx2.Client(timeout=10, follow_redirects=False) as browser:
        callback = login(browser, browser.get(authorization_url), redirect_uri, account=account)
        # The client's loopback server takes the code; what it answers is a page for the user.
        delivered = browser.get(callback)
    return {"request": request, "callback": callback.split("?")[0], "status": delivered.status_code}


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m tests.support.browser_login AUTHORIZATION_URL", file=sys.stderr)
        return 2
    try:
        outcome = sign_in(argv[0], account=os.environ.get("BROWSER_LOGIN_ACCOUNT", "alice"))
    except (AssertionError, httpx2.HTTPError, SystemExit) as exc:  # recorded for the test to show
        outcome = {"request": {}, "error": f"{type(exc).__name__}: {exc}", "status": None}
    record = os.environ.get("BROWSER_LOGIN_RECORD")
    if record:
        with open(record, "a", encoding="utf-8") as out:
            out.write(json.dumps(outcome) + "\n")
    return 0 if outcome["status"] == 200 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
