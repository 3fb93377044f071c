#!/usr/bin/env bash
# System packages the test suite and benchmarks use, from Debian's archive:
#   prometheus (+ promtool)  end-to-end collection tests through a real Prometheus
#   wrk                      reference load generator for `cargo bench` comparisons
# Idempotent: installs only what is missing. Needs root (or sudo).
set -euo pipefail
need=()
command -v prometheus >/dev/null 2>&1 || need+=(prometheus)
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
command -v wrk >/dev/null 2>&1 || need+=(wrk)
if [ ${#need[@]} -eq 0 ]; then
  echo "test dependencies present: prometheus promtool wrk"
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
