#!/usr/bin/env bash
# Run the test suite (fast tests by default; pass `-m slow` for the end-to-end ones). Extra arguments go to pytest.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
"$root/scripts/setup_env.sh"
cd "$root"
exec "$root/.venv/bin/python" -m pytest "$@"
