#!/usr/bin/env bash
# Build the pinned local control plane (kube-apiserver, kube-controller-manager, kube-scheduler,
# kubectl, etcd, kwok, helm), the real node's kubelet, and promtool/prometheus from Go modules,
# and cache them OUTSIDE the repo:
#
#   ${GOMEMLIMIT_CACHE:-$HOME/.cache/gomemlimit-operator}/bin/<component>-<version>/
#
# Versions come only from tests/cluster/versions.env. A warm run only checks that every binary
# exists and that its --version matches the pin, then exits (a second or two).
#
# Usage: bash tests/cluster/build.sh [--force] [--quiet] [COMPONENT ...]
#   --force   rebuild every component even if the cached binaries look right
#   --quiet   print only the summary line (and errors)
#   COMPONENT only these: kubernetes etcd kwok helm kubelet prometheus (default: all)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VERSIONS_FILE="$HERE/versions.env"
RETRY="bash $HERE/build.sh"
if [[ -n ${GOMEMLIMIT_CACHE:-} ]]; then
  RETRY="GOMEMLIMIT_CACHE=$GOMEMLIMIT_CACHE $RETRY"
fi
LOCKED=0

FORCE=0
QUIET=0
ALL_COMPONENTS=(kubernetes etcd kwok helm kubelet prometheus)
ONLY=()
for arg in "$@"; do
  case "$arg" in
    --force) FORCE=1 ;;
    --quiet) QUIET=1 ;;
    -h | --help) sed -n '2,16p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    kubernetes | etcd | kwok | helm | kubelet | prometheus) ONLY+=("$arg") ;;
    *) echo "build.sh: unknown argument '$arg' (try --help)" >&2; exit 2 ;;
  esac
done

say() { [[ $QUIET == 1 ]] || echo "build.sh: $*" >&2; }

die() { # die <step> <message> [command to retry]
  echo "" >&2
  echo "build.sh: FAILED at step '$1': $2" >&2
  if [[ -n ${3:-} ]]; then
    echo "build.sh:   failing command: $3" >&2
  fi
  echo "build.sh:   retry the whole build with: $RETRY" >&2
  if [[ $LOCKED == 1 ]]; then
    rm -rf "$BIN_ROOT"/.tmp-* # half-built components never look valid anyway
  fi
  exit 1
}

# --- versions (the single source of truth) --------------------------------------------------
[[ -r $VERSIONS_FILE ]] || die "read versions" "$VERSIONS_FILE is missing"
# shellcheck source=/dev/null
source "$VERSIONS_FILE"
for var in K8S_VERSION ETCD_VERSION KWOK_VERSION HELM_VERSION PROMETHEUS_VERSION; do
  [[ -n ${!var:-} ]] || die "read versions" "$var is not set in $VERSIONS_FILE"
done
# Kubernetes staging modules (k8s.io/api, client-go, ...) are versioned v0.<minor>.<patch>.
K8S_STAGING_VERSION="v0.${K8S_VERSION#v1.}"
K8S_MINOR="${K8S_VERSION#v1.}"
K8S_MINOR="${K8S_MINOR%%.*}"

# --- environment ------------------------------------------------------------------------------
command -v go >/dev/null 2>&1 || die "find go" "no 'go' on PATH (Go >= 1.26 is required)"
command -v flock >/dev/null 2>&1 || die "find flock" "no 'flock' on PATH (Debian package util-linux)"

# Never download a different Go toolchain behind our back; static binaries; no VCS stamping
# (the builder modules live inside this git checkout, which may be dirty).
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-buildvcs=false
# sum.golang.org is reachable here, so module checksums are verified as usual (no GONOSUMDB).

CACHE_ROOT="${GOMEMLIMIT_CACHE:-$HOME/.cache/gomemlimit-operator}"
BIN_ROOT="$CACHE_ROOT/bin"
LOG_DIR="$CACHE_ROOT/logs"
mkdir -p "$BIN_ROOT" "$LOG_DIR" || die "create cache dir" "cannot create $BIN_ROOT"

K8S_DIR="$BIN_ROOT/kubernetes-$K8S_VERSION"
ETCD_DIR="$BIN_ROOT/etcd-$ETCD_VERSION"
KWOK_DIR="$BIN_ROOT/kwok-$KWOK_VERSION"
HELM_DIR="$BIN_ROOT/helm-$HELM_VERSION"
# The kubelet is its own component (same builder module and pin as the control plane), so adding
# it never invalidates the cached control-plane binaries.
KUBELET_DIR="$BIN_ROOT/kubelet-$K8S_VERSION"
PROMETHEUS_DIR="$BIN_ROOT/prometheus-$PROMETHEUS_VERSION"
# Prometheus 3.x modules are tagged v0.<major><minor>.<patch>: 3.16.0 is v0.316.0.
PROMETHEUS_MODULE_VERSION=$(awk -F. -v v="${PROMETHEUS_VERSION#v}" \
  'BEGIN { split(v, p, "."); printf "v0.%d%02d.%d", p[1], p[2], p[3] }')

# The kwok stages we ship, relative to $(kwok module)/kustomize/stage. This is the same set as
# kwok's own "fast" kustomization: nodes become Ready at once and keep a lease, pods go Running.
KWOK_STAGES=(
  node/fast/node-initialize.yaml
  node/heartbeat-with-lease/node-heartbeat-with-lease.yaml
  pod/fast/pod-ready.yaml
  pod/fast/pod-complete.yaml
  pod/fast/pod-delete.yaml
)

now() { echo "$EPOCHREALTIME"; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1fs", b - a }'; }

# --- checks: does a cached component match its pin? ------------------------------------------
version_of() { "$@" 2>/dev/null || true; }

kubernetes_ok() {
  local dir=$1 b
  for b in kube-apiserver kube-controller-manager kube-scheduler; do
    [[ -x $dir/$b ]] || return 1
    [[ "$(version_of "$dir/$b" --version)" == "Kubernetes $K8S_VERSION" ]] || return 1
  done
  [[ -x $dir/kubectl ]] || return 1
  version_of "$dir/kubectl" version --client | grep -qx "Client Version: $K8S_VERSION"
}

etcd_ok() {
  [[ -x $1/etcd ]] && version_of "$1/etcd" --version | grep -qx "etcd Version: ${ETCD_VERSION#v}"
}

kwok_ok() {
  local dir=$1 s
  [[ -x $dir/kwok ]] || return 1
  version_of "$dir/kwok" --version | grep -q "^kwok version $KWOK_VERSION " || return 1
  for s in "${KWOK_STAGES[@]}"; do
    [[ -s $dir/stages/$(basename "$s") ]] || return 1
  done
}

kubelet_ok() {
  [[ -x $1/kubelet ]] && [[ "$(version_of "$1/kubelet" --version)" == "Kubernetes $K8S_VERSION" ]]
}

prometheus_ok() {
  local b
  for b in promtool prometheus; do
    [[ -x $1/$b ]] || return 1
    version_of "$1/$b" --version | grep -q "^$b, version ${PROMETHEUS_VERSION#v} " || return 1
  done
}

helm_ok() {
  [[ -x $1/helm ]] && [[ "$(version_of "$1/helm" version --short)" == "$HELM_VERSION" ]]
}

# --- running a step with a useful failure message --------------------------------------------
diagnose() { # diagnose <log file>
  if grep -qiE 'no space left on device|disk quota exceeded' "$1"; then
    echo "out of disk space: check 'df -h $CACHE_ROOT $(go env GOCACHE) $(go env GOMODCACHE)'"
  elif grep -qiE 'dial tcp|no such host|connection refused|i/o timeout|proxyconnect|TLS handshake|network is unreachable' "$1"; then
    echo "cannot reach the Go module proxy or checksum DB (GOPROXY=$(go env GOPROXY), GOSUMDB=$(go env GOSUMDB))"
  elif grep -qiE 'unknown revision|invalid version|40[34] (Not Found|Forbidden)|not available|no matching versions|not found' "$1"; then
    echo "a pinned version does not exist (or a builder go.mod is stale): check $VERSIONS_FILE, then run bash $HERE/builder/sync-versions.sh"
  elif grep -qiE 'checksum mismatch|SECURITY ERROR' "$1"; then
    echo "checksum mismatch: a builder go.sum disagrees with the module proxy (see the log)"
  else
    echo "see the log above"
  fi
}

run_step() { # run_step <step> <workdir> <command...>
  local step=$1 dir=$2
  shift 2
  local log="$LOG_DIR/${step//[^A-Za-z0-9._-]/_}.log"
  local shown
  shown="(cd $(printf '%q' "$dir") && GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-buildvcs=false"
  shown+="$(printf ' %q' "$@"))"
  if ! (cd "$dir" && "$@") >"$log" 2>&1; then
    echo "----- last lines of $log -----" >&2
    tail -n 25 "$log" >&2
    echo "------------------------------" >&2
    die "$step" "$(diagnose "$log")" "$shown"
  fi
}

check_disk() { # check_disk <step>: a cold Kubernetes build needs a few GiB of build cache
  local path free_kib
  for path in "$CACHE_ROOT" "$(go env GOCACHE)" "$(go env GOMODCACHE)"; do
    mkdir -p "$path" 2>/dev/null || true
    free_kib=$(df -Pk "$path" | awk 'NR == 2 { print $4 }')
    if [[ -n $free_kib && $free_kib -lt $((3 * 1024 * 1024)) ]]; then
      die "$1" "out of disk space: less than 3 GiB free for $path" "df -h $path"
    fi
  done
}

check_builder_pins() { # the builder go.mod files must agree with versions.env
  local mod="$HERE/builder/kubernetes/go.mod" bad
  grep -qE "^[[:space:]]*k8s\.io/kubernetes $K8S_VERSION( |$)" "$mod" \
    || die "check builder pins" "$mod does not require k8s.io/kubernetes $K8S_VERSION; fix: bash $HERE/builder/sync-versions.sh"
  bad=$(grep -E '^[[:space:]]*k8s\.io/[a-z0-9-]+ => k8s\.io/[a-z0-9-]+ v' "$mod" \
    | grep -vE " $K8S_STAGING_VERSION\$" || true)
  [[ -z $bad ]] || die "check builder pins" \
    "$mod has replace lines not at $K8S_STAGING_VERSION: $bad; fix: bash $HERE/builder/sync-versions.sh"
  mod="$HERE/builder/etcd/go.mod"
  grep -qE "^[[:space:]]*go\.etcd\.io/etcd/server/v3 $ETCD_VERSION( |$)" "$mod" \
    || die "check builder pins" "$mod does not require go.etcd.io/etcd/server/v3 $ETCD_VERSION; fix: bash $HERE/builder/sync-versions.sh"
}

# Build into a fresh temp dir next to the final one, verify, then rename: a half-finished or
# failed build never looks like a valid cache entry.
new_stage_dir() { # mktemp makes 0700 dirs; the cache is meant to be readable
  local d
  d=$(mktemp -d "$BIN_ROOT/.tmp-$1.XXXXXX") && chmod 755 "$d" && echo "$d"
}
promote() { # promote <staging dir> <final dir>
  rm -rf "$2"
  mv "$1" "$2"
}

module_field() { # module_field <module@version> <Dir|GoMod>: downloads the module if needed
  go mod download -json "$1" | sed -n "s/^[[:space:]]*\"$2\": \"\\(.*\\)\",\\{0,1\\}\$/\\1/p"
}

# --- the builds --------------------------------------------------------------------------------
build_kubernetes() {
  local tmp ldflags
  tmp=$(new_stage_dir "kubernetes-$K8S_VERSION")
  ldflags=$(k8s_ldflags)
  run_step "kubernetes: download modules" "$HERE/builder/kubernetes" go mod download
  run_step "kubernetes: go build" "$HERE/builder/kubernetes" \
    go build -trimpath -ldflags "$ldflags" -o "$tmp/" \
    k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubectl
  kubernetes_ok "$tmp" || die "kubernetes: verify" "built binaries in $tmp do not report $K8S_VERSION"
  promote "$tmp" "$K8S_DIR"
}

k8s_ldflags() {
  local ldflags="-s -w" pkg
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$K8S_MINOR"
    ldflags+=" -X $pkg.gitTreeState=clean"
  done
  echo "$ldflags"
}

build_kubelet() {
  local tmp
  tmp=$(new_stage_dir "kubelet-$K8S_VERSION")
  run_step "kubelet: download modules" "$HERE/builder/kubernetes" go mod download
  run_step "kubelet: go build" "$HERE/builder/kubernetes" \
    go build -trimpath -ldflags "$(k8s_ldflags)" -o "$tmp/" k8s.io/kubernetes/cmd/kubelet
  kubelet_ok "$tmp" || die "kubelet: verify" "built kubelet in $tmp does not report $K8S_VERSION"
  promote "$tmp" "$KUBELET_DIR"
}

build_prometheus() {
  local tmp ldflags
  tmp=$(new_stage_dir "prometheus-$PROMETHEUS_VERSION")
  # remove_all_sd drops the cloud service-discovery plugins (and their SDKs) that neither
  # promtool's rule tests nor a loopback scrape need; the web UI assets are not built in.
  ldflags="-s -w -X github.com/prometheus/common/version.Version=${PROMETHEUS_VERSION#v}"
  ldflags+=" -X github.com/prometheus/common/version.Revision=module-$PROMETHEUS_MODULE_VERSION"
  ldflags+=" -X github.com/prometheus/common/version.Branch=HEAD"
  run_step "prometheus: go install" "$CACHE_ROOT" env GOBIN="$tmp" \
    go install -trimpath -tags remove_all_sd -ldflags "$ldflags" \
    "github.com/prometheus/prometheus/cmd/promtool@$PROMETHEUS_MODULE_VERSION" \
    "github.com/prometheus/prometheus/cmd/prometheus@$PROMETHEUS_MODULE_VERSION"
  prometheus_ok "$tmp" || die "prometheus: verify" "built promtool/prometheus in $tmp do not report $PROMETHEUS_VERSION"
  promote "$tmp" "$PROMETHEUS_DIR"
}

build_etcd() {
  local tmp
  tmp=$(new_stage_dir "etcd-$ETCD_VERSION")
  run_step "etcd: download modules" "$HERE/builder/etcd" go mod download
  run_step "etcd: go build" "$HERE/builder/etcd" \
    go build -trimpath -ldflags "-s -w" -o "$tmp/etcd" go.etcd.io/etcd/server/v3
  etcd_ok "$tmp" || die "etcd: verify" "built etcd in $tmp does not report $ETCD_VERSION"
  promote "$tmp" "$ETCD_DIR"
}

build_kwok() {
  local tmp moddir s
  tmp=$(new_stage_dir "kwok-$KWOK_VERSION")
  run_step "kwok: go install" "$CACHE_ROOT" env GOBIN="$tmp" \
    go install -trimpath -ldflags "-s -w -X sigs.k8s.io/kwok/pkg/consts.Version=${KWOK_VERSION#v}" \
    "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION"
  moddir=$(module_field "sigs.k8s.io/kwok@$KWOK_VERSION" Dir) || true
  [[ -n $moddir && -d $moddir/kustomize/stage ]] \
    || die "kwok: find stages" "no kustomize/stage in the kwok module" \
      "go mod download -json sigs.k8s.io/kwok@$KWOK_VERSION"
  mkdir -p "$tmp/stages"
  for s in "${KWOK_STAGES[@]}"; do
    [[ -f $moddir/kustomize/stage/$s ]] \
      || die "kwok: copy stages" "$moddir/kustomize/stage/$s is missing (did kwok rename it?)"
    cp "$moddir/kustomize/stage/$s" "$tmp/stages/"
  done
  chmod -R u+w "$tmp/stages"
  kwok_ok "$tmp" || die "kwok: verify" "built kwok in $tmp does not report $KWOK_VERSION"
  promote "$tmp" "$KWOK_DIR"
}

build_helm() {
  local tmp gomod client_go ldflags helm_minor pkg
  tmp=$(new_stage_dir "helm-$HELM_VERSION")
  # Helm stamps the Kubernetes version it was built against (its client-go), as its Makefile does.
  run_step "helm: download module" "$CACHE_ROOT" go mod download "helm.sh/helm/v3@$HELM_VERSION"
  gomod=$(module_field "helm.sh/helm/v3@$HELM_VERSION" GoMod) || true
  client_go=$(awk '$1 == "k8s.io/client-go" { print $2; exit }' "$gomod" 2>/dev/null || true)
  ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
  ldflags+=" -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
  if [[ $client_go =~ ^v0\.([0-9]+)\. ]]; then
    helm_minor=${BASH_REMATCH[1]}
    for pkg in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
      ldflags+=" -X $pkg.k8sVersionMajor=1 -X $pkg.k8sVersionMinor=$helm_minor"
    done
  fi
  run_step "helm: go install" "$CACHE_ROOT" env GOBIN="$tmp" \
    go install -trimpath -ldflags "$ldflags" "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
  helm_ok "$tmp" || die "helm: verify" "built helm in $tmp does not report $HELM_VERSION"
  promote "$tmp" "$HELM_DIR"
}

# --- main --------------------------------------------------------------------------------------
# One build at a time per cache dir; a second caller waits, then finds everything cached.
exec 9>"$CACHE_ROOT/build.lock"
if ! flock -n 9; then
  say "another build holds $CACHE_ROOT/build.lock; waiting for it (up to 60 min)..."
  flock -w 3600 9 || die "lock" "timed out waiting for $CACHE_ROOT/build.lock" "flock $CACHE_ROOT/build.lock true"
fi
LOCKED=1
rm -rf "$BIN_ROOT"/.tmp-* # leftovers of an interrupted build (we hold the lock)

check_builder_pins

T0=$(now)
SUMMARY=()
if [[ ${#ONLY[@]} -eq 0 ]]; then
  ONLY=("${ALL_COMPONENTS[@]}")
fi
for comp in "${ONLY[@]}"; do
  case $comp in
    kubernetes) dir=$K8S_DIR ver=$K8S_VERSION ;;
    kubelet) dir=$KUBELET_DIR ver=$K8S_VERSION ;;
    prometheus) dir=$PROMETHEUS_DIR ver=$PROMETHEUS_VERSION ;;
    etcd) dir=$ETCD_DIR ver=$ETCD_VERSION ;;
    kwok) dir=$KWOK_DIR ver=$KWOK_VERSION ;;
    helm) dir=$HELM_DIR ver=$HELM_VERSION ;;
  esac
  t=$(now)
  if [[ $FORCE == 0 ]] && "${comp}_ok" "$dir"; then
    SUMMARY+=("$comp $ver cached $(elapsed "$t")")
    continue
  fi
  check_disk "$comp: disk space"
  say "building $comp $ver into $dir (cold builds take minutes; logs in $LOG_DIR)"
  "build_$comp"
  SUMMARY+=("$comp $ver built $(elapsed "$t")")
  say "built $comp $ver in $(elapsed "$t")"
done

summary=$(printf '%s, ' "${SUMMARY[@]}")
echo "cluster-build: ok in $(elapsed "$T0") (${summary%, }) bin=$BIN_ROOT"
