#!/usr/bin/env bash
# The test command (`make test` runs setup first, then this): linters, then the whole suite.
# ROS graph tests choose their own ROS_DOMAIN_ID and keep discovery on loopback.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
# shellcheck disable=SC1091
set +u; source env.sh; set -u
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST
echo "== ruff"
ruff check .
ruff format --check .
echo "== pytest"
python -m pytest "$@"
