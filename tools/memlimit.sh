#!/usr/bin/env bash
# Run a command inside a memory cgroup with a hard limit, then report the cgroup's peak usage
# and whether the OOM killer struck. Needs root. cgroup v1 (memory controller mounted at
# /sys/fs/cgroup/memory) or v2 (unified hierarchy at /sys/fs/cgroup).
#
#   tools/memlimit.sh 800M -- tessera render benches/memory/poster-2048.toml --max-memory 800M
#
# The limit counts everything the kernel charges to the group: anonymous memory and the page
# cache of files read (clean cache is reclaimed before the OOM killer is called). Swap is
# disallowed so the limit is real. Exit status: the command's own, or 137 when it was killed.
set -euo pipefail

if [[ $# -lt 3 || $2 != "--" ]]; then
    echo "usage: $0 LIMIT -- COMMAND [ARGS...]   (LIMIT like 800M or 2G)" >&2
    exit 2
fi
limit=$1
shift 2
name="tessera-memlimit-$$"

if [[ -d /sys/fs/cgroup/memory ]]; then
    version=1
    group=/sys/fs/cgroup/memory/$name
elif [[ -f /sys/fs/cgroup/cgroup.controllers ]]; then
    version=2
    group=/sys/fs/cgroup/$name
else
    echo "memlimit: no memory cgroup controller found under /sys/fs/cgroup" >&2
    exit 2
fi

mkdir "$group"
cleanup() {
    # The group can only be removed once empty; the command has exited by now.
    rmdir "$group" 2>/dev/null || echo "memlimit: could not remove $group" >&2
}
trap cleanup EXIT

if [[ $version == 1 ]]; then
    echo "$limit" >"$group/memory.limit_in_bytes"
    # No swap: memsw limit equal to the memory limit (absent when swap accounting is off).
    if [[ -f $group/memory.memsw.limit_in_bytes ]]; then
        echo "$limit" >"$group/memory.memsw.limit_in_bytes"
    fi
    limit_bytes=$(cat "$group/memory.limit_in_bytes")
else
    echo "$limit" >"$group/memory.max"
    echo 0 >"$group/memory.swap.max" 2>/dev/null || true
    limit_bytes=$(cat "$group/memory.max")
fi

echo "memlimit: cgroup v$version $group, limit $limit_bytes bytes ($((limit_bytes >> 20)) MiB)" >&2
status=0
# The child joins the group before it execs the command, so every allocation is charged.
bash -c 'echo $$ > "$1/cgroup.procs"; shift; exec "$@"' memlimit "$group" "$@" || status=$?

if [[ $version == 1 ]]; then
    peak=$(cat "$group/memory.max_usage_in_bytes")
    oom_kills=$(awk '/^oom_kill /{print $2}' "$group/memory.oom_control")
    hit_limit=$(cat "$group/memory.failcnt")
else
    peak=$(cat "$group/memory.peak" 2>/dev/null || echo 0)
    oom_kills=$(awk '/^oom_kill /{print $2}' "$group/memory.events")
    hit_limit=$(awk '/^max /{print $2}' "$group/memory.events")
fi
echo "memlimit: exit status $status; cgroup peak $peak bytes ($((peak >> 20)) MiB incl. page cache)" \
    "of limit $((limit_bytes >> 20)) MiB; times at the limit (reclaim): ${hit_limit:-0};" \
    "OOM kills: ${oom_kills:-0}" >&2
if [[ ${oom_kills:-0} != 0 ]]; then
    echo "memlimit: FAILED: the OOM killer struck" >&2
    exit 137
fi
exit "$status"
