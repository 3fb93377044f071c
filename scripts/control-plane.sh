#!/usr/bin/env bash
# A real Kubernetes control plane on loopback for the tests: etcd, kube-apiserver and
# kube-controller-manager (kube-scheduler on request), built from their Go modules by our
# module in testenv/ (pinned to Kubernetes v1.34.4, etcd v3.6.4). No container engine.
#
#   scripts/control-plane.sh build
#       Builds the binaries into $MESHBENCH_TESTENV_BIN (default target/testenv/bin) unless
#       they are current for testenv/go.sum; Go's build cache makes a rebuild cheap.
#   scripts/control-plane.sh up [--scheduler] [--with-node] [--owner-pid PID]
#       Builds what is missing, makes the certificates and the service-account key, starts
#       the components on free loopback ports with their data in a new temporary directory,
#       waits until /readyz answers and the controllers run, and prints the path of an
#       admin kubeconfig on its last line. With --owner-pid, everything is torn down when
#       that process exits (a test binary that panics or is killed leaves nothing behind).
#       --with-node also starts kube-scheduler and `meshbench node` (the node agent, as
#       the node's own identity system:node:meshbench-node, so the Node authorizer and
#       NodeRestriction apply to it; bound to kube-proxy's role system:node-proxier for
#       its Service proxy, and allowed to read Deployments, ReplicaSets and HPAs for the
#       kube-state series it serves at /metrics/kube-state) and waits until the node is
#       registered; the agent is
#       $MESHBENCH_BIN (default target/debug/meshbench, built if missing), then
#       metrics-server (registered as v1beta1.metrics.k8s.io). Pods get IPs from
#       198.18.0.0/16 and Services ClusterIPs from 198.19.0.0/16; the agent makes both
#       ranges local to this machine (`local` routes on lo, removed by `down`).
#   scripts/control-plane.sh down DIR|KUBECONFIG
#       Stops every process that `up` started for that directory and removes it.
#
# Authorization Node,RBAC; admission with PodSecurity (on by default) and NodeRestriction;
# every controller on (--controllers=*), so the garbage collector, Deployment, ReplicaSet,
# Job and HPA controllers run. Logs are in DIR/logs/.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TESTENV="$ROOT/testenv"
BIN="${MESHBENCH_TESTENV_BIN:-$ROOT/target/testenv/bin}"
K8S_VERSION="v1.34.4"
COMPONENTS=(etcd kube-apiserver kube-controller-manager kube-scheduler metrics-server)

die() { echo "control-plane: $*" >&2; exit 1; }
log() { echo "control-plane: $*" >&2; }

stamp() {
  { cat "$TESTENV/go.mod" "$TESTENV/go.sum" "$TESTENV/etcd/main.go"; go version; } | sha256sum | cut -d' ' -f1
}

build() {
  command -v go >/dev/null || die "go is not on PATH (Go 1.24 or newer builds the control plane)"
  mkdir -p "$BIN"
  local want; want="$(stamp)"
  if [ -f "$BIN/.stamp" ] && [ "$(cat "$BIN/.stamp")" = "$want" ]; then
    local c missing=0
    for c in "${COMPONENTS[@]}"; do [ -x "$BIN/$c" ] || missing=1; done
    [ "$missing" = 0 ] && return 0
  fi
  export GOTOOLCHAIN=local GOFLAGS=-buildvcs=false
  local v="k8s.io/component-base/version" cv="k8s.io/client-go/pkg/version" ldflags="-s -w" pkg
  for pkg in "$v" "$cv"; do
    ldflags+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=34 -X $pkg.gitTreeState=clean"
  done
  local t0=$SECONDS
  log "building etcd (go.etcd.io/etcd/server/v3) into $BIN"
  (cd "$TESTENV" && go build -ldflags "-s -w" -o "$BIN/etcd" ./etcd)
  for c in kube-apiserver kube-controller-manager kube-scheduler; do
    log "building $c (k8s.io/kubernetes $K8S_VERSION)"
    (cd "$TESTENV" && go build -ldflags "$ldflags" -o "$BIN/$c" "k8s.io/kubernetes/cmd/$c")
  done
  log "building metrics-server (sigs.k8s.io/metrics-server)"
  (cd "$TESTENV" && go build -ldflags "-s -w" -o "$BIN/metrics-server" sigs.k8s.io/metrics-server/cmd/metrics-server)
  echo "$want" > "$BIN/.stamp"
  log "built in $((SECONDS - t0)) s"
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# cert NAME CN [O] [SANS]: a key and a certificate signed by DIR/pki/ca.
cert() {
  local name=$1 cn=$2 org=${3:-} sans=${4:-} subj="/CN=$2" ext="$PKI/$1.ext"
  [ -n "$org" ] && subj="/O=$org/CN=$cn"
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout "$PKI/$name.key" -subj "$subj" \
    -out "$PKI/$name.csr" 2>/dev/null
  if [ -n "$sans" ]; then
    printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth,clientAuth\n' "$sans" > "$ext"
  else
    printf 'extendedKeyUsage=clientAuth\n' > "$ext"
  fi
  openssl x509 -req -in "$PKI/$name.csr" -CA "$PKI/${5:-ca}.crt" -CAkey "$PKI/${5:-ca}.key" \
    -CAcreateserial -days 2 -extfile "$ext" -out "$PKI/$name.crt" 2>/dev/null
}

ca() {
  openssl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout "$PKI/$1.key" -subj "/CN=$2" \
    -days 2 -out "$PKI/$1.crt" 2>/dev/null
}

pki() {
  mkdir -p "$PKI"
  ca ca meshbench-test-ca
  ca front-proxy-ca meshbench-test-front-proxy-ca
  cert apiserver kube-apiserver "" \
    "IP:127.0.0.1,IP:198.19.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
  cert admin meshbench-admin system:masters
  cert kube-controller-manager system:kube-controller-manager
  cert kube-scheduler system:kube-scheduler
  cert front-proxy-client front-proxy-client "" "" front-proxy-ca
  cert node "system:node:$NODE_NAME" system:nodes
  openssl ecparam -name prime256v1 -genkey -noout -out "$PKI/sa.key" 2>/dev/null
  openssl ec -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub" 2>/dev/null
}

kubeconfig() {
  cat > "$DIR/$1.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: meshbench-test
  cluster:
    server: https://127.0.0.1:$API_PORT
    certificate-authority: $PKI/ca.crt
users:
- name: $1
  user:
    client-certificate: $PKI/$1.crt
    client-key: $PKI/$1.key
contexts:
- name: $1
  context: { cluster: meshbench-test, user: $1, namespace: default }
current-context: $1
EOF
}

start() {
  local name=$1; shift
  setsid "$BIN/$name" "$@" >"$DIR/logs/$name.log" 2>&1 < /dev/null &
  echo "$!" >> "$DIR/pids"
}

apicurl() {
  curl -sf --max-time 2 --cacert "$PKI/ca.crt" --cert "$PKI/admin.crt" --key "$PKI/admin.key" \
    "https://127.0.0.1:$API_PORT$1"
}

wait_for() {
  local what=$1 deadline=$((SECONDS + $2)); shift 2
  until "$@" >/dev/null 2>&1; do
    if [ $SECONDS -ge $deadline ]; then
      log "timed out waiting for $what; last log lines:"
      tail -n 20 "$DIR"/logs/*.log >&2 || true
      down_dir "$DIR"
      die "$what did not come up"
    fi
    for pid in $(cat "$DIR/pids"); do
      kill -0 "$pid" 2>/dev/null || { tail -n 30 "$DIR"/logs/*.log >&2; down_dir "$DIR"; die "a component exited while waiting for $what"; }
    done
    sleep 0.2
  done
}

default_sa() { apicurl /api/v1/namespaces/default/serviceaccounts/default; }
node_registered() { apicurl "/api/v1/nodes/$NODE_NAME" | grep -q '"type": *"Ready"'; }

NODE_NAME=meshbench-node
# RFC 2544's benchmarking range: pods (the node itself is .1) and Service ClusterIPs. The
# node agent makes both local to this machine; loopback addresses would not do, the API
# rejects them in EndpointSlices.
POD_CIDR=198.18.0.0/16
NODE_IP=198.18.0.1
SERVICE_CIDR=198.19.0.0/16

apipost() {
  curl -sf --max-time 5 --cacert "$PKI/ca.crt" --cert "$PKI/admin.crt" --key "$PKI/admin.key" \
    -H 'Content-Type: application/json' -X POST "https://127.0.0.1:$API_PORT$1" -d "$2" >/dev/null
}

# metrics-server scrapes the agent's /metrics/resource (plain HTTP: the agent serves no
# TLS) and serves metrics.k8s.io through the aggregation layer, for the HPA controller.
start_metrics_server() {
  local port; port=$(free_port)
  mkdir -p "$DIR/metrics-server"
  local kc="$DIR/admin.kubeconfig"
  start metrics-server --secure-port "$port" --bind-address "$NODE_IP" \
    --cert-dir "$DIR/metrics-server" --kubeconfig "$kc" \
    --authentication-kubeconfig "$kc" --authorization-kubeconfig "$kc" \
    --kubelet-preferred-address-types InternalIP --kubelet-use-node-status-port \
    --deprecated-kubelet-completely-insecure --metric-resolution 15s
  # A Service without a selector and its endpoint: the aggregator routes to the endpoint
  # (--enable-aggregator-routing).
  apipost /api/v1/namespaces/kube-system/services \
    '{"metadata":{"name":"metrics-server"},"spec":{"ports":[{"name":"https","port":443,"targetPort":'"$port"'}]}}'
  apipost /api/v1/namespaces/kube-system/endpoints \
    '{"metadata":{"name":"metrics-server"},"subsets":[{"addresses":[{"ip":"'"$NODE_IP"'"}],"ports":[{"name":"https","port":'"$port"'}]}]}'
  apipost /apis/apiregistration.k8s.io/v1/apiservices \
    '{"metadata":{"name":"v1beta1.metrics.k8s.io"},"spec":{"group":"metrics.k8s.io","version":"v1beta1","service":{"namespace":"kube-system","name":"metrics-server","port":443},"insecureSkipTLSVerify":true,"groupPriorityMinimum":100,"versionPriority":100}}'
}
metrics_served() { apicurl /apis/metrics.k8s.io/v1beta1/nodes; }

# The agent also plays kube-proxy (Services on their ClusterIPs), which reads
# EndpointSlices: kube-proxy's own bootstrap role, bound to the node's identity.
bind_node_proxier() {
  curl -sf --max-time 5 --cacert "$PKI/ca.crt" --cert "$PKI/admin.crt" --key "$PKI/admin.key" \
    -H 'Content-Type: application/json' -X POST \
    "https://127.0.0.1:$API_PORT/apis/rbac.authorization.k8s.io/v1/clusterrolebindings" \
    -d "{\"metadata\":{\"name\":\"meshbench-node-proxier\"},
         \"roleRef\":{\"apiGroup\":\"rbac.authorization.k8s.io\",\"kind\":\"ClusterRole\",\"name\":\"system:node-proxier\"},
         \"subjects\":[{\"apiGroup\":\"rbac.authorization.k8s.io\",\"kind\":\"User\",\"name\":\"system:node:$NODE_NAME\"}]}" \
    >/dev/null
}

# The agent also serves kube-state-metrics' series (`--state-metrics`) for a Prometheus:
# it reads Deployments, ReplicaSets and HPAs, which no node role may.
bind_node_state_reader() {
  apipost /apis/rbac.authorization.k8s.io/v1/clusterroles \
    '{"metadata":{"name":"meshbench-node-state-metrics"},"rules":[{"apiGroups":["apps"],"resources":["deployments","replicasets"],"verbs":["get","list","watch"]},{"apiGroups":["autoscaling"],"resources":["horizontalpodautoscalers"],"verbs":["get","list","watch"]}]}'
  apipost /apis/rbac.authorization.k8s.io/v1/clusterrolebindings \
    '{"metadata":{"name":"meshbench-node-state-metrics"},"roleRef":{"apiGroup":"rbac.authorization.k8s.io","kind":"ClusterRole","name":"meshbench-node-state-metrics"},"subjects":[{"apiGroup":"rbac.authorization.k8s.io","kind":"User","name":"system:node:'"$NODE_NAME"'"}]}'
}

# The node agent: pods bound to the node run as processes (see `meshbench node --help`).
start_node() {
  local mb="${MESHBENCH_BIN:-$ROOT/target/debug/meshbench}"
  if [ ! -x "$mb" ]; then
    log "building $mb (cargo build --bin meshbench)"
    (cd "$ROOT" && cargo build --locked --bin meshbench >&2)
  fi
  mkdir -p "$DIR/node"
  KUBECONFIG="$DIR/node.kubeconfig" RUST_LOG="${MESHBENCH_NODE_LOG:-info,kube=warn}" \
    setsid "$mb" node --name "$NODE_NAME" --data-dir "$DIR/node" --port "$(free_port)" \
    --pod-cidr "$POD_CIDR" --service-cidr "$SERVICE_CIDR" --state-metrics \
    >"$DIR/logs/meshbench-node.log" 2>&1 < /dev/null &
  echo "$!" >> "$DIR/pids"
}

up() {
  local scheduler=0 node=0 owner=""
  while [ $# -gt 0 ]; do
    case $1 in
      --scheduler) scheduler=1 ;;
      --with-node) scheduler=1; node=1 ;;
      --owner-pid) owner=$2; shift ;;
      *) die "unknown option $1 (usage: up [--scheduler] [--with-node] [--owner-pid PID])" ;;
    esac
    shift
  done
  build
  command -v openssl >/dev/null || die "openssl is not on PATH"
  command -v curl >/dev/null || die "curl is not on PATH"
  DIR="$(mktemp -d "${TMPDIR:-/tmp}/meshbench-cp-XXXXXX")"
  PKI="$DIR/pki"
  mkdir -p "$DIR/logs" "$DIR/etcd" "$DIR/kcm"
  : > "$DIR/pids"
  local t0=$SECONDS
  pki
  local etcd_port peer_port kcm_port sched_port
  etcd_port=$(free_port); peer_port=$(free_port); API_PORT=$(free_port)
  kcm_port=$(free_port); sched_port=$(free_port)
  kubeconfig admin
  kubeconfig kube-controller-manager
  kubeconfig kube-scheduler
  kubeconfig node
  echo "$API_PORT" > "$DIR/api-port"

  start etcd --name default --data-dir "$DIR/etcd" --unsafe-no-fsync \
    --listen-client-urls "http://127.0.0.1:$etcd_port" \
    --advertise-client-urls "http://127.0.0.1:$etcd_port" \
    --listen-peer-urls "http://127.0.0.1:$peer_port" \
    --initial-advertise-peer-urls "http://127.0.0.1:$peer_port" \
    --initial-cluster "default=http://127.0.0.1:$peer_port" --log-level warn
  start kube-apiserver --etcd-servers "http://127.0.0.1:$etcd_port" \
    --bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port "$API_PORT" \
    --tls-cert-file "$PKI/apiserver.crt" --tls-private-key-file "$PKI/apiserver.key" \
    --client-ca-file "$PKI/ca.crt" \
    --service-account-issuer https://kubernetes.default.svc.cluster.local \
    --service-account-key-file "$PKI/sa.pub" --service-account-signing-key-file "$PKI/sa.key" \
    --service-cluster-ip-range "$SERVICE_CIDR" --endpoint-reconciler-type none \
    --authorization-mode Node,RBAC --enable-admission-plugins NodeRestriction \
    --requestheader-client-ca-file "$PKI/front-proxy-ca.crt" \
    --requestheader-allowed-names front-proxy-client \
    --requestheader-username-headers X-Remote-User --requestheader-group-headers X-Remote-Group \
    --requestheader-extra-headers-prefix X-Remote-Extra- \
    --proxy-client-cert-file "$PKI/front-proxy-client.crt" \
    --proxy-client-key-file "$PKI/front-proxy-client.key" --enable-aggregator-routing \
    --profiling=false
  wait_for "kube-apiserver /readyz" 60 apicurl /readyz
  local kcm="$DIR/kube-controller-manager.kubeconfig"
  start kube-controller-manager --kubeconfig "$kcm" \
    --authentication-kubeconfig "$kcm" --authorization-kubeconfig "$kcm" \
    --service-account-private-key-file "$PKI/sa.key" --root-ca-file "$PKI/ca.crt" \
    --use-service-account-credentials --controllers '*' --leader-elect=false \
    --bind-address 127.0.0.1 --secure-port "$kcm_port" --cert-dir "$DIR/kcm" \
    --profiling=false
  if [ "$scheduler" = 1 ]; then
    local ks="$DIR/kube-scheduler.kubeconfig"
    start kube-scheduler --kubeconfig "$ks" --authentication-kubeconfig "$ks" \
      --authorization-kubeconfig "$ks" --leader-elect=false \
      --bind-address 127.0.0.1 --secure-port "$sched_port" --profiling=false
  fi
  # The service-account controller creating `default` shows the controllers run.
  wait_for "kube-controller-manager" 60 default_sa
  if [ "$node" = 1 ]; then
    wait_for "the RBAC bootstrap roles" 30 bind_node_proxier
    bind_node_state_reader
    start_node
    wait_for "the node agent to register $NODE_NAME" 60 node_registered
    start_metrics_server
    wait_for "metrics-server (metrics.k8s.io)" 60 metrics_served
  fi
  if [ -n "$owner" ]; then
    # Detached from the caller's process group and output, so it outlives a killed owner.
    setsid bash -c 'while kill -0 "$1" 2>/dev/null; do sleep 1; done; exec "$2" down "$3"' \
      _ "$owner" "$ROOT/scripts/control-plane.sh" "$DIR" >/dev/null 2>&1 < /dev/null &
  fi
  log "up in $((SECONDS - t0)) s: https://127.0.0.1:$API_PORT (data and logs in $DIR)"
  echo "$DIR/admin.kubeconfig"
}

down_dir() {
  local dir=$1 pid
  [ -f "$dir/pids" ] || return 0
  for pid in $(tac "$dir/pids"); do kill -TERM "$pid" 2>/dev/null || true; done
  # The node agent stops its pods on SIGTERM (up to 5 s of grace each, in parallel).
  for _ in $(seq 100); do
    local alive=0
    for pid in $(cat "$dir/pids"); do kill -0 "$pid" 2>/dev/null && alive=1; done
    [ "$alive" = 0 ] && break
    sleep 0.1
  done
  for pid in $(cat "$dir/pids"); do kill -KILL "$pid" 2>/dev/null || true; done
  # The node agent removes its routes on exit; not if it was killed.
  if [ -d "$dir/node" ]; then
    ip route del local "$POD_CIDR" dev lo table local 2>/dev/null || true
    ip route del local "$SERVICE_CIDR" dev lo table local 2>/dev/null || true
  fi
  rm -rf "$dir"
}

down() {
  [ $# -eq 1 ] || die "usage: down DIR|KUBECONFIG"
  local dir=$1
  [ -f "$dir" ] && dir="$(dirname "$dir")"
  case "$(basename "$dir")" in
    meshbench-cp-*) ;;
    *) die "$1 is not a directory made by 'up'" ;;
  esac
  down_dir "$dir"
}

case "${1:-}" in
  build) build ;;
  up) shift; up "$@" ;;
  down) shift; down "$@" ;;
  *) die "usage: $0 build | up [--scheduler] [--with-node] [--owner-pid PID] | down DIR|KUBECONFIG" ;;
esac
