#!/usr/bin/env bash
# Installs everything into .venv (with the test extras) and runs the whole test
# suite, the slow end-to-end tests included. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
KERAS_SSL_EXTRAS="[test]" source scripts/setup_env.sh

status=0
python -m pytest --durations=15 "$@" || status=$?
if [ "$status" -eq 5 ]; then
  echo "pytest collected no tests: treating that as a failure" >&2
fi
exit "$status"
