#!/usr/bin/env bash
# System packages the test suite and benchmarks use, from Debian's archive:
#   prometheus (+ promtool)  end-to-end collection tests through a real Prometheus
#   wrk                      reference load generator for `cargo bench` comparisons
# and from PyPI:
#   kubernetes-validate      the Kubernetes OpenAPI schemas, to check rendered manifests
# Idempotent: installs only what is missing. Needs root (or sudo) for the Debian part.
set -euo pipefail
if ! python3 -m kubernetes_validate --version >/dev/null 2>&1; then
  python3 -m pip install --quiet --disable-pip-version-check 'kubernetes-validate==1.37.0'
fi
need=()
command -v prometheus >/dev/null 2>&1 || need+=(prometheus)
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
command -v wrk >/dev/null 2>&1 || need+=(wrk)
if [ ${#need[@]} -eq 0 ]; then
  echo "test dependencies present: prometheus promtool wrk kubernetes-validate"
  exit 0
fi
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
# The package's maintainer scripts try to start a system service; tests start their own
# instance on a free loopback port, so service start-up is disabled while installing.
policy=/usr/sbin/policy-rc.d
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$policy" >/dev/null
  $SUDO chmod +x "$policy"
  trap '$SUDO rm -f "$policy"' EXIT
fi
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends $(printf '%s\n' "${need[@]}" | sort -u)
