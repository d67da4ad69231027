#!/usr/bin/env bash
# Run the whole test suite, the slow end-to-end tests included (add `-m "not slow"` for the fast ones only; .ci/run
# runs the fast ones, then the slow ones). Sets up .venv first. Extra arguments go to pytest.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
"$root/scripts/setup_env.sh"
cd "$root"
exec "$root/.venv/bin/python" -m pytest "$@"
