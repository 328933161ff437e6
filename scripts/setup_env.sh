# Sourced by quickstart.sh and test.sh: creates .venv (Python 3.11) if needed
# and installs the three distributions of this repository into it, editable.
# Usage: [KERAS_SSL_EXTRAS="[test]"] source scripts/setup_env.sh
set -euo pipefail
python_bin=${PYTHON:-python3.11}
command -v "$python_bin" >/dev/null 2>&1 || python_bin=python3
if [ ! -x .venv/bin/python ]; then
  echo "creating .venv with $("$python_bin" --version)"
  "$python_bin" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e ./evaluation -e ".${KERAS_SSL_EXTRAS:-}" -e ./plugins
export PATH="$PWD/.venv/bin:$PATH"
# 3 hides TensorFlow's C++ errors too (`failed call to cuInit` on a machine without a GPU),
# as the binaries do on their own (keras_ssl_eval.quiet); a value already set is kept.
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-3}
