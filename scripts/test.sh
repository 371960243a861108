#!/usr/bin/env bash
# The whole test suite, as CI runs it: install what the tests need, then fmt, clippy and
# every test. Usage: scripts/test.sh   (run from anywhere; needs root for apt-get/pip)
set -euo pipefail
cd "$(dirname "$0")/.."

# System packages the tests use as real components (not mocks).
#   prometheus-alertmanager, prometheus: the ruler's end-to-end tests
APT_PACKAGES=(prometheus-alertmanager prometheus)
# PyPI packages: moto's S3-compatible server for the object-store test,
# kubernetes-validate for the deploy manifests.
PIP_PACKAGES=("moto[server]" kubernetes-validate)

need_apt=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || need_apt+=("$p")
done
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "==> apt-get install ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
  # The Debian packages start their daemons; tests start their own on loopback.
  for s in prometheus prometheus-alertmanager prometheus-node-exporter; do
    (service "$s" stop || true) >/dev/null 2>&1
  done
fi
need_pip=()
for p in "${PIP_PACKAGES[@]}"; do
  python3 -m pip show "${p%%[*}" >/dev/null 2>&1 || need_pip+=("$p")
done
if [ ${#need_pip[@]} -gt 0 ]; then
  echo "==> pip install ${need_pip[*]}"
  python3 -m pip install -q --disable-pip-version-check "${need_pip[@]}"
fi

echo "==> cargo fmt --check"
cargo fmt --all -- --check
echo "==> cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "==> cargo nextest (all tests)"
cargo nextest run --workspace --locked --no-fail-fast
echo "==> doc tests"
cargo test --workspace --doc --locked
