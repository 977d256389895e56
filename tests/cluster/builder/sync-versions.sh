#!/usr/bin/env bash
# Regenerate the builder modules' go.mod/go.sum from tests/cluster/versions.env.
#
# Run this after changing K8S_VERSION or ETCD_VERSION in versions.env, then commit the builder
# go.mod/go.sum files. (kwok and helm are installed with `go install module@version` and need no
# builder module.)
#
# Kubernetes: k8s.io/kubernetes requires its ~30 staging modules at v0.0.0 and replaces them with
# ./staging/... paths, which do not exist for a consumer. We read the replace list from the pinned
# k8s.io/kubernetes go.mod and replace each staging module with its published v0.<minor>.<patch>.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=/dev/null
source "$HERE/../versions.env"
export GOTOOLCHAIN=local GOFLAGS=-buildvcs=false

staging_version="v0.${K8S_VERSION#v1.}"

echo "sync-versions: kubernetes $K8S_VERSION (staging modules at $staging_version)"
k8s_gomod=$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" \
  | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",\{0,1\}$/\1/p')
[[ -r $k8s_gomod ]] || { echo "sync-versions: cannot download k8s.io/kubernetes@$K8S_VERSION" >&2; exit 1; }
mapfile -t staging < <(awk '$2 == "=>" && $3 ~ /^\.\/staging\// { print $1 }' "$k8s_gomod" | sort -u)
[[ ${#staging[@]} -gt 0 ]] || { echo "sync-versions: no staging replaces in $k8s_gomod" >&2; exit 1; }

cd "$HERE/kubernetes"
# Drop every existing k8s.io replace, then add one per staging module of the pinned release.
edit_args=()
while read -r old; do
  edit_args+=("-dropreplace=$old")
done < <(go mod edit -json | awk -F'"' '/"Old": \{/ { getline; if ($4 ~ /^k8s\.io\//) print $4 }')
if [[ ${#edit_args[@]} -gt 0 ]]; then
  go mod edit "${edit_args[@]}"
fi
# Append one replace block by hand (go mod edit -replace would write one block per line).
{
  echo ""
  echo "replace ("
  for m in "${staging[@]}"; do
    printf '\t%s => %s %s\n' "$m" "$m" "$staging_version"
  done
  echo ")"
} >>go.mod
go mod edit -fmt
go mod edit "-require=k8s.io/kubernetes@$K8S_VERSION"
go mod tidy
echo "sync-versions: wrote $HERE/kubernetes/go.mod (${#staging[@]} replace lines)"

echo "sync-versions: etcd $ETCD_VERSION"
cd "$HERE/etcd"
go mod edit "-require=go.etcd.io/etcd/server/v3@$ETCD_VERSION"
go mod tidy
echo "sync-versions: wrote $HERE/etcd/go.mod"
echo "sync-versions: done; now run 'bash tests/cluster/build.sh' and commit tests/cluster/builder/*/go.{mod,sum}"
