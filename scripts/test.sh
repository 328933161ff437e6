#!/usr/bin/env bash
# Installs everything into .venv (with the test extras) and runs the whole test
# suite, the slow end-to-end tests included. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
KERAS_SSL_EXTRAS="[test]" source scripts/setup_env.sh

# Two pytest-xdist workers (CI has 2 cores): much of a TensorFlow test is
# single-threaded Python (tracing, Keras layers), and the subprocess-heavy
# modules overlap with the rest. A module stays on one worker (--dist loadfile)
# so its module fixtures are built once; tests/conftest.py orders the longest
# modules first. KERAS_SSL_TEST_WORKERS=0 runs everything in this process.
# Lint first (settings in pyproject.toml): a red lint fails the run like a red test.
python -m ruff check .

status=0
python -m pytest -n "${KERAS_SSL_TEST_WORKERS:-2}" --dist loadfile --no-loadscope-reorder \
  --durations=15 "$@" || status=$?
if [ "$status" -eq 5 ]; then
  echo "pytest collected no tests: treating that as a failure" >&2
fi
exit "$status"
