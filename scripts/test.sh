#!/usr/bin/env bash
# The test command (README): installs what the tests need, builds the Kubernetes control
# plane they start, then runs every test of the workspace. Works on a fresh machine with
# Rust, Go and a C compiler; extra arguments go to `cargo test`.
#   - Prometheus, promtool and wrk from Debian, kubernetes-validate from PyPI
#     (scripts/install-test-deps.sh);
#   - etcd, kube-apiserver, kube-controller-manager and kube-scheduler from their Go
#     modules (scripts/control-plane.sh build; testenv/ pins the versions). The tests
#     start one control plane per test binary that needs it and stop it when they end.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-test-deps.sh
bash scripts/control-plane.sh build
exec cargo test --workspace --locked "$@"
