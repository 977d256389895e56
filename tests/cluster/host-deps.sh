#!/usr/bin/env bash
# The real node's container runtime: Debian's containerd and runc, pinned in versions.env
# (CONTAINERD_DEB_VERSION, RUNC_DEB_VERSION) and installed by package name with apt.
#
# Why Debian's packages and not Go modules: runc needs cgo and libseccomp (a C toolchain and
# -dev headers the rest of the build does not need), containerd adds minutes of cold build on
# 2 cores, and the packaged pair is maintained by Debian security and was checked on this kind
# of machine. The real node needs root anyway, and so does apt.
#
# - already installed at the pinned upstream version: nothing to do (a fraction of a second);
# - root: apt-get install containerd=<pin> runc=<pin>;
# - not root: one line saying what to run; the cluster then has kwok nodes only, and tests that
#   need the real node are skipped (outside CI) with that reason.
# In CI (CI set) a missing runtime is an error.
#
# Usage: bash tests/cluster/host-deps.sh [--check]    (--check: report only, never install)
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=/dev/null
source "$HERE/versions.env"
CHECK=0
[[ ${1:-} == --check ]] && CHECK=1
ci() { [[ -n ${CI:-} && ${CI:-} != 0 && ${CI:-} != false ]]; }

upstream() { echo "${1%%[~+]*}"; } # 1.6.20~ds1-1+deb12u3 -> 1.6.20
want_containerd=$(upstream "$CONTAINERD_DEB_VERSION")
want_runc=$(upstream "$RUNC_DEB_VERSION")

have() { # have <binary> <upstream version> <version command...>
  local bin=$1 ver=$2
  shift 2
  command -v "$bin" >/dev/null 2>&1 && "$@" 2>/dev/null | head -1 | grep -qF " $ver"
}

missing=()
have containerd "$want_containerd" containerd --version || missing+=("containerd=$CONTAINERD_DEB_VERSION")
have runc "$want_runc" runc --version || missing+=("runc=$RUNC_DEB_VERSION")
command -v ctr >/dev/null 2>&1 || [[ " ${missing[*]} " == *" containerd="* ]] || missing+=("containerd=$CONTAINERD_DEB_VERSION")
# The operator image's base root filesystem (tests/cluster/operator_image.py, `make image`).
command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)

if [[ ${#missing[@]} -eq 0 ]]; then
  echo "host-deps: ok (containerd $want_containerd, runc $want_runc, debootstrap)"
  exit 0
fi
cmd="apt-get install -y --no-install-recommends ${missing[*]}"
if [[ $CHECK == 1 || $(id -u) != 0 || ! -x $(command -v apt-get || echo /nonexistent) ]]; then
  why="not root"
  [[ $CHECK == 1 ]] && why="--check"
  [[ $(id -u) == 0 && $CHECK == 0 ]] && why="no apt-get (not Debian?)"
  echo "host-deps: the real node needs ${missing[*]} ($why): run 'sudo apt-get update && sudo $cmd'; until then the cluster has kwok nodes only" >&2
  ci && exit 1
  exit 0
fi
echo "host-deps: installing ${missing[*]} (Debian packages; the real node's runtime)"
export DEBIAN_FRONTEND=noninteractive
if ! apt-get install -y -qq --no-install-recommends "${missing[@]}" >/tmp/host-deps-apt.log 2>&1; then
  apt-get update -qq >>/tmp/host-deps-apt.log 2>&1 || true
  if ! apt-get install -y -qq --no-install-recommends "${missing[@]}" >>/tmp/host-deps-apt.log 2>&1; then
    tail -5 /tmp/host-deps-apt.log >&2
    echo "host-deps: FAILED: $cmd (a pinned version may be gone from the mirror: see apt-cache policy containerd runc, then update versions.env)" >&2
    ci && exit 1
    exit 0
  fi
fi
echo "host-deps: ok (containerd $want_containerd, runc $want_runc installed)"
