#!/usr/bin/env bash
# Runs .ci/run as CI does: on a fresh clone of the committed HEAD, with CI=true, an empty
# environment (only a system PATH) and a fresh HOME, so nothing installed by hand into this
# shell's PATH, virtual environments or caches can hide a missing install step.
#
#   tools/ci_fresh.sh                 # clone HEAD into a temporary folder, run, clean up
#   KEEP=1 tools/ci_fresh.sh          # keep the clone and its HOME (printed) for a look
#
# Run it before a stop whenever .ci/run or the install steps change. For the whole check, run
# it on a machine without clang, libclang-rt, qemu-user and the AArch64 cross compiler (e.g.
# `apt-get purge` them first, or in a debootstrap chroot): .ci/run must install them itself.
set -euo pipefail
repo="$(git -C "$(dirname "${BASH_SOURCE[0]}")/.." rev-parse --show-toplevel)"
work="$(mktemp -d)"
if [[ -n "${KEEP:-}" ]]; then
    echo "tools/ci_fresh.sh: working in $work (kept)"
else
    trap 'rm -rf "$work"' EXIT
fi
git clone -q "$repo" "$work/clone"
mkdir "$work/home"
echo "tools/ci_fresh.sh: $(git -C "$work/clone" log -1 --format='%h %s')"
start=$SECONDS
status=0
env -i HOME="$work/home" PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    LANG=C.UTF-8 CI=true bash -c 'cd "$1" && exec bash .ci/run' ci_fresh "$work/clone" || status=$?
echo "tools/ci_fresh.sh: .ci/run exited $status after $((SECONDS - start)) s"
exit "$status"
