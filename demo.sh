#!/usr/bin/env bash
# The main job on the embedded default: see README.md. Extra arguments go to `python -m ltx2_tuner.cli.demo`.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
"$root/scripts/setup_env.sh"
exec "$root/.venv/bin/python" -m ltx2_tuner.cli.demo "$@"
