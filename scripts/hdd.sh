#!/usr/bin/env bash
# scripts/hdd.sh: an emulated HDD for manual experiments: a loop device on a
# (sparse) file, throttled by a cgroup v1 blkio group to about 200 IOPS and
# 170 MiB/s. Only processes inside the cgroup are throttled, and only their
# O_DIRECT I/O (wbcache opens its backing device O_DIRECT; use fio
# --direct=1). The harnesses use the same functions (scripts/lib.sh).
#
#   scripts/hdd.sh up     [--name NAME] [--file PATH] [--size 8G] [--iops 200] [--bps 170M]
#   scripts/hdd.sh exec   [--name NAME] -- CMD [ARGS...]   run CMD inside the cgroup
#   scripts/hdd.sh status [--name NAME]                    throttle settings and I/O counts
#   scripts/hdd.sh down   [--name NAME] [--rm]             detach the loop, remove the cgroup (and the file)
#
# `up` prints shell assignments (HDD_LOOP=..., HDD_CG=..., HDD_FILE=...) and
# remembers them in /run/wbcache-hdd-NAME.env for `exec`, `status`, `down`.
# Example:
#   eval "$(scripts/hdd.sh up --size 4G)"
#   scripts/hdd.sh exec -- fio --name=x --filename=$HDD_LOOP --direct=1 \
#       --rw=randwrite --bs=4k --iodepth=32 --ioengine=libaio --runtime=5 --time_based
#   scripts/hdd.sh exec -- wbcache mount --cache /ssd/c.img --backing $HDD_LOOP /mnt/wbc
#   scripts/hdd.sh down --rm
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "$0")/lib.sh"

cmd=${1:-}
[ -n "$cmd" ] || sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//' >&2
[ -n "$cmd" ] || exit 2
shift
name=wbc-hdd file= size=8G iops=200 bps=170M rmfile=0
while [ $# -gt 0 ]; do
	case $1 in
	--name) name=$2; shift 2 ;;
	--file) file=$2; shift 2 ;;
	--size) size=$2; shift 2 ;;
	--iops) iops=$2; shift 2 ;;
	--bps) bps=$2; shift 2 ;;
	--rm) rmfile=1; shift ;;
	--) shift; break ;;
	-h | --help) sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
	*) die "unknown option $1" ;;
	esac
done
state=/run/wbcache-hdd-$name.env

load_state() {
	[ -f "$state" ] || die "no emulated HDD named $name (no $state); run '$0 up' first"
	# shellcheck disable=SC1090
	. "$state"
}

case $cmd in
up)
	need_root
	[ -f "$state" ] && die "$name is already up ($state); '$0 down --name $name' first"
	[ -n "$file" ] || file=/var/tmp/$name.img
	wbc_install_traps
	hdd_up "$name" "$file" "$size" "$iops" "$bps"
	printf 'HDD_LOOP=%s\nHDD_CG=%s\nHDD_MAJMIN=%s\nHDD_FILE=%s\n' "$HDD_LOOP" "$HDD_CG" "$HDD_MAJMIN" "$file" | tee "$state"
	# Success: leave it set up.
	WBC_LOOPS=() WBC_CGROUPS=()
	;;
exec)
	load_state
	[ $# -gt 0 ] || die "exec: missing command"
	echo "$$" >"$HDD_CG/cgroup.procs"
	exec "$@"
	;;
status)
	load_state
	cat "$state"
	grep . "$HDD_CG"/blkio.throttle.*_device
	echo "serviced (reads writes): $(cg_serviced "$HDD_CG" "$HDD_MAJMIN")"
	;;
down)
	need_root
	load_state
	cgroup_remove "$HDD_CG"
	loop_detach "$HDD_LOOP"
	[ "$rmfile" = 1 ] && rm -f "$HDD_FILE"
	rm -f "$state"
	log "emulated HDD $name removed"
	;;
*) die "unknown command $cmd (up, exec, status, down)" ;;
esac
