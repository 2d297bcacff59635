#!/bin/busybox sh
# PID 1 of the nested-KVM lane's L1 machine (QEMU TCG, -cpu max: emulated
# AMD SVM). Loads KVM and the modules listed in /lib/modules/order, mounts
# this machine's root (virtio-9p tag `hostroot`, read-only) under a tmpfs
# overlay, mounts the test's share (tag `share`, read-write) at its host
# path, sets up a pure cgroup v2 hierarchy as systemd does on a fresh
# Debian 12, and runs the script named by corral.l1.script= in that root.
# Prints the L2 shutdowns L1's KVM saw (`corral-l1: L2 shutdown: …`) and
# `corral-l1: status=N` with the script's exit status, or
# `corral-l1: FAILED: why` when L1 itself could not be set up; then powers off.
/bin/busybox mkdir -p /bin /proc /sys /dev /newroot /ovl /host
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1
fail() { echo "corral-l1: FAILED: $*"; poweroff -f; sleep 5; exit 1; }

script= share= watchdog= heartbeat=
for word in $(cat /proc/cmdline); do
  case "$word" in
    corral.l1.script=*) script=${word#*=} ;;
    corral.l1.share=*) share=${word#*=} ;;
    corral.l1.watchdog=*) watchdog=${word#*=} ;;
    corral.l1.heartbeat=*) heartbeat=${word#*=} ;;
  esac
done
[ -n "$script" ] || fail "no corral.l1.script= on the command line"

for m in $(cat /lib/modules/order); do
  insmod "/lib/modules/$m" || fail "insmod $m"
done
[ -c /dev/kvm ] || fail "no /dev/kvm after loading kvm-amd (is -cpu max missing?)"

# Every L2 shutdown (a triple fault: SVM exit code 0x7f) that L1's KVM sees,
# traced with L2's RIP and the event the CPU was delivering at the time
# (SVM's EXITINTINFO: valid in bit 31, type in bits 10:8, vector in 7:0).
# KVM reinitialises the vCPU before it reports the shutdown to Corral, so
# this is the only record of where L2 was. Printed after the script.
trace=/sys/kernel/tracing
mount -t tracefs tracefs $trace || fail "mount tracefs"
echo 64 > $trace/buffer_size_kb
echo 'exit_reason == 127' > $trace/events/kvm/kvm_exit/filter \
  && echo 1 > $trace/events/kvm/kvm_exit/enable \
  || fail "trace L2 shutdowns (kvm:kvm_exit)"

mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=512000,cache=loose hostroot /host \
  || fail "mount the host root (9p tag hostroot)"
mount -t tmpfs -o mode=0755 tmpfs /ovl
mkdir -p /ovl/upper /ovl/work
mount -t overlay -o lowerdir=/host,upperdir=/ovl/upper,workdir=/ovl/work overlay /newroot \
  || fail "mount the overlay root"
mount -t proc proc /newroot/proc
mount -t sysfs sysfs /newroot/sys
mount -t devtmpfs devtmpfs /newroot/dev
mkdir -p /newroot/dev/pts /newroot/dev/shm
mount -t devpts devpts /newroot/dev/pts
mount -t tmpfs tmpfs /newroot/dev/shm
mount -t tmpfs tmpfs /newroot/run
# /tmp stays the host's (through the overlay): a checkout, target directory
# or cache under /tmp must be seen in L1 as on the host.
if [ -n "$share" ]; then
  mkdir -p "/newroot$share"
  mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 share "/newroot$share" \
    || fail "mount the share (9p tag share) at $share"
fi

# Pure cgroup v2, every controller, laid out as systemd does: PID 1 in
# /init.scope, services in /system.slice/NAME.service, controllers enabled
# in the root's and system.slice's subtree_control.
cg=/newroot/sys/fs/cgroup
mount -t cgroup2 -o nsdelegate cgroup2 "$cg" || fail "mount cgroup2"
mkdir -p "$cg/init.scope" "$cg/system.slice/corral-lane.service"
echo 1 > "$cg/init.scope/cgroup.procs"
for c in $(cat "$cg/cgroup.controllers"); do
  echo "+$c" > "$cg/cgroup.subtree_control" || fail "enable $c in the root cgroup"
  echo "+$c" > "$cg/system.slice/cgroup.subtree_control" || fail "enable $c in system.slice"
done

# A run still going after corral.l1.watchdog= seconds (shortly before the
# host kills L1) prints where every user task waits and the kernel's task
# dump, so a hang in CI can be diagnosed from its console.
dump_tasks() {
  echo "corral-l1: watchdog: still running after ${watchdog}s; user tasks:"
  for t in /proc/[0-9]*/task/[0-9]*; do
    # Kernel threads have no command line (proc files have no size).
    cmd=$(tr '\0' ' ' < "${t%/task/*}/cmdline" 2>/dev/null | cut -c1-200)
    [ -n "$cmd" ] || continue
    read -r stat < "$t/stat"
    echo "== $t $(cat "$t/comm") state=$(echo "$stat" | sed 's/.*) \(.\).*/\1/') wchan=$(cat "$t/wchan")"
    echo "   $cmd"
    sed 's/^/   /' "$t/stack"
  done
  grep -E 'MemFree|MemAvailable|^Cached|Dirty' /proc/meminfo
  echo 1 > /proc/sys/kernel/sysrq
  echo 7 > /proc/sys/kernel/printk
  echo w > /proc/sysrq-trigger
  echo l > /proc/sysrq-trigger
  # The other CPUs print their NMI backtraces a little later: let them
  # finish and quieten the console, so that the marker is not cut in two
  # by a kernel line (it was, in CI).
  sleep 1
  echo 1 > /proc/sys/kernel/printk
  echo "corral-l1: watchdog: end of dump"
}
if [ -n "$watchdog" ]; then
  (sleep "$watchdog" && dump_tasks) &
fi
# A heartbeat file in the share, touched every corral.l1.heartbeat=
# seconds: the host tells an L1 that stopped running at all (the emulator
# wedged: no user space, no console) from one whose script is slow.
if [ -n "$heartbeat" ] && [ -n "$share" ]; then
  (while :; do date +%s > "/newroot$share/.l1-heartbeat"; sleep "$heartbeat"; done) &
fi

echo "corral-l1: ready, kernel $(uname -r), $(nproc) CPUs, cgroup2 controllers: $(cat "$cg/cgroup.controllers")"
chroot /newroot /bin/sh -c '
  echo $$ > /sys/fs/cgroup/system.slice/corral-lane.service/cgroup.procs
  export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root
  cd "${1%/*}" && exec /bin/sh "$1"' lane "$script"
status=$?
grep 'reason shutdown' $trace/trace | sed 's/^ */corral-l1: L2 shutdown: /'
echo "corral-l1: status=$status"
poweroff -f
