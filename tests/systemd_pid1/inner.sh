# Inside the new namespaces: a private /run holding the test's units, private /var/cache,
# /var/lib and /etc/mica for the unit's Cache/State/ConfigurationDirectory=, our own cgroup2
# mount, then exec systemd as PID 1.
set -e
mount --make-rprivate /
mount -t tmpfs tmpfs /run
mkdir -p /run/systemd/system
cp "$UNITS"/* /run/systemd/system/
for d in /var/cache /var/lib; do mount -t tmpfs tmpfs "$d"; done
mount -t tmpfs tmpfs /sys/fs/cgroup
mount -t cgroup2 cgroup2 /sys/fs/cgroup
exec /lib/systemd/systemd --system --unit=mica-test.target --log-target=console \
     --log-level=notice
