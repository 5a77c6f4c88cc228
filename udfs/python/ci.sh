#!/usr/bin/env bash
# Builds the Python package once and runs its tests against the published wheels, one
# virtual environment per supported Polars line. Called by .ci/run; runnable alone
# from the repository root.
set -euo pipefail
cd "$(dirname "$0")/../.."

PYTHON="${PYTHON:-python3}"
# Pinned: what the tests were last run with, one Polars per supported line (both pass).
# datafusion 55 is built on the DataFusion major of this package.
# moto: the S3 server the model-URL tests start on loopback.
COMMON=("pyarrow==26.0.1" "numpy==2.4.6" "pytest==8.4.2" "datafusion==55.0.0" "moto[server]==5.2.1")
POLARS_LINES=("2.1.0" "1.44.2")
# `ci` profile: opt-level 1 (see udfs/python/Cargo.toml).
PROFILE="${RECLAG_PY_PROFILE:-ci}"
# The CLI the tests compare against, in the workspace's own target directory. After
# `cargo test --workspace` this only links the executable from the libraries the
# tests compiled; `cargo build -p reclag-pipelines` would compile Polars and
# DataFusion again with other features.
cargo build -q --workspace --bins
export CARGO_TARGET_DIR="$PWD/target/python"

venv() {
  local dir="target/pyenv-$1"
  if [ ! -x "$dir/bin/python" ]; then
    "$PYTHON" -m venv "$dir"
  fi
  "$dir/bin/python" -m pip install --quiet --disable-pip-version-check "${@:2}"
  echo "$dir"
}

cargo fmt --manifest-path udfs/python/Cargo.toml -- --check
cargo clippy -q --manifest-path udfs/python/Cargo.toml --all-targets -- -D warnings

build=$(venv build "maturin==1.16.0")
rm -rf target/python-wheels
"$build/bin/maturin" build --profile "$PROFILE" -m udfs/python/Cargo.toml -o target/python-wheels
wheel=$(ls target/python-wheels/reclag-*.whl)

status=0
for v in "${POLARS_LINES[@]}"; do
  env_dir=$(venv "polars-$v" "${COMMON[@]}" "polars==$v")
  "$env_dir/bin/python" -m pip install --quiet --disable-pip-version-check --force-reinstall --no-deps "$wheel"
  echo "== pytest with polars $v, datafusion 55.0.0"
  if ! RECLAG_BIN="$PWD/target/debug/reclag" "$env_dir/bin/python" -m pytest -q udfs/python/tests; then
    echo "FAILED with polars $v"
    status=1
  fi
done
exit $status
