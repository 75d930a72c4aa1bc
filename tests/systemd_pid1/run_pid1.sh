#!/bin/bash
# Run a private systemd as PID 1 of new pid/mount/cgroup/uts/ipc namespaces (root and unshare
# needed, no systemd on the host), starting the units in UNIT_DIR through mica-test.target,
# for at most SECONDS; then kill it and remove its cgroup. Adapted from the shared test tool
# ../shared/tools/systemd-pid1.
# usage: run_pid1.sh SECONDS UNIT_DIR OUTDIR
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
SECS=$1; UNITS=$2; OUT=$3; mkdir -p "$OUT"
CG=/sys/fs/cgroup/unified; [ -f /sys/fs/cgroup/cgroup.controllers ] && CG=/sys/fs/cgroup
CG=$CG/mica-systemd-test-$$; mkdir -p "$CG"
( echo $BASHPID > "$CG/cgroup.procs"
  exec timeout -s KILL "$SECS" unshare --pid --fork --kill-child --mount --cgroup --uts --ipc \
       --mount-proc env UNITS="$UNITS" OUT="$OUT" bash "$HERE/inner.sh" ) >"$OUT/pid1.log" 2>&1
for _ in $(seq 50); do [ -z "$(cat $(find "$CG" -name cgroup.procs))" ] && break; sleep 0.1; done
for d in $(find "$CG" -depth -type d); do rmdir "$d"; done
