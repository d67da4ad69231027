#!/usr/bin/env bash
# Create or update the project virtualenv in .venv and install ltx2-tuner into it (editable, with test tools).
# torch: a torch the host Python already has is kept (the venv then sees the system site-packages);
# otherwise torch==2.13.0 is installed (on a machine without a CUDA GPU and a local CPU wheel, that is the CPU build).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv="$root/.venv"
python=${PYTHON:-python3}

if [ ! -x "$venv/bin/python" ]; then
    venv_flags=()
    if "$python" -c "import torch" >/dev/null 2>&1; then
        venv_flags+=(--system-site-packages)
        echo "setup: keeping the torch of $python ($("$python" -c 'import torch; print(torch.__version__)'))"
    fi
    echo "setup: creating $venv"
    "$python" -m venv "${venv_flags[@]}" "$venv"
fi

# pip on some machines warns about every missing local index folder; keep real messages only.
quiet_pip() { "$venv/bin/python" -m pip install -q "$@" 2>&1 | { grep -v "^WARNING: Location '" || true; }; }

if ! "$venv/bin/python" -c "import torch" >/dev/null 2>&1; then
    echo "setup: installing torch==2.13.0"
    quiet_pip torch==2.13.0
fi

# Reinstall the project only when its dependency list changed.
stamp="$venv/.ltx2_tuner_pyproject.sha256"
wanted=$(sha256sum "$root/pyproject.toml" | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$wanted" ]; then
    echo "setup: installing ltx2-tuner and its dependencies into $venv"
    quiet_pip -e "$root[dev]"
    echo "$wanted" >"$stamp"
fi
