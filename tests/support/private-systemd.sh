#!/bin/sh
# PID 1 of a fresh PID and mount namespace (started by `unshare --pid
# --fork --mount --propagation private --mount-proc`): gives systemd a
# private /run, a unit set of just D-Bus plus an empty target (so nothing
# of the host is started twice), and its console in /run/console.log; then
# becomes systemd. tests/systemd.rs uses it to test Corral's systemd
# cgroup driver against a real systemd and system bus.
set -eu
mount -t tmpfs -o mode=755 tmpfs /run
units=/run/corral-test-units
mkdir -p "$units"
cp /lib/systemd/system/dbus.socket /lib/systemd/system/dbus.service "$units/"
cat > "$units/corral-test.target" <<'UNIT'
[Unit]
Description=Corral systemd-driver test
Wants=dbus.socket dbus.service
UNIT
for dir in /etc/systemd/system /lib/systemd/system; do
    mount --bind "$units" "$dir"
done
: > /run/console.log
mount --bind /run/console.log /dev/console
exec env container=corral-test /lib/systemd/systemd --system \
    --unit=corral-test.target --log-target=console --log-level=info
