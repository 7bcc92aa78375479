#!/bin/sh
# PID 1 of the usbwire kernel lab (busybox ash).
#
# Brings the guest to the state every lab test starts from: USB/IP and device modules
# loaded, 10.0.2.15 on the QEMU user network, the per-VM scratch share mounted at the
# same path as on the host, and (when asked) the host's root mounted read-only on /host
# ready for chroot. Then it hands the control tty to lab-agent and only reaps orphans.
# Any setup failure powers off at once, so the host sees the reason in console.log
# instead of waiting for a boot timeout.

export PATH=/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root

die() {
    echo "lab-init: FATAL: $*" >/dev/console
    poweroff -f
}

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs -o mode=1777 shm /dev/shm
mount -t tmpfs -o mode=755 run /run
mount -t tmpfs -o mode=1777 tmp /tmp
mkdir -p /run/lab
hostname lab

# Dependencies come first in the list (resolved from modules.dep on the host). A failed
# insmod is reported but not fatal: the test that needs the module will say so.
while read -r module; do
    insmod "$module" || echo "lab-init: insmod $module failed" >/dev/console
done </etc/lab/modules

for word in $(cat /proc/cmdline); do
    case "$word" in
        lab.scratch=*) LAB_SCRATCH=${word#lab.scratch=} ;;
        lab.ctl=*) LAB_CTL=${word#lab.ctl=} ;;
    esac
done
[ -n "$LAB_SCRATCH" ] || die "no lab.scratch= on the kernel command line"
export LAB_SCRATCH

ip link set lo up
ip link set eth0 up || die "no eth0 (virtio_net)"
ip addr add 10.0.2.15/24 dev eth0
ip route add default via 10.0.2.2

# msize: the 8 KiB default makes every 9p read a round trip per page.
mkdir -p "$LAB_SCRATCH"
mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 scratch "$LAB_SCRATCH" ||
    die "cannot mount the scratch share"
# shellcheck source=/dev/null
. "$LAB_SCRATCH/lab.conf" || die "no lab.conf in the scratch share"

if [ "$LAB_HOSTROOT" = 1 ]; then
    # cache=loose is safe: the share is read-only and we only read code from it.
    mount -t 9p -o ro,trans=virtio,version=9p2000.L,msize=262144,cache=loose hostroot /host ||
        die "cannot mount the host root share"
    # Keep a view of the host's /tmp before a tmpfs hides it: paths listed in LAB_KEEP
    # (a checkout or virtualenv under /tmp) are bound back into the chroot from it.
    mkdir -p /run/lab/hosttmp
    mount --bind /host/tmp /run/lab/hosttmp
    mount -t proc proc /host/proc
    mount -t sysfs sysfs /host/sys
    mount --rbind /dev /host/dev
    mount -t tmpfs -o mode=755 run /host/run
    mount -t tmpfs -o mode=1777 tmp /host/tmp
    for keep in $LAB_KEEP; do
        mkdir -p "/host$keep"
        mount --bind "/run/lab/hosttmp${keep#/tmp}" "/host$keep" ||
            die "cannot keep $keep visible in the chroot"
    done
    mkdir -p "/host$LAB_SCRATCH"
    mount --bind "$LAB_SCRATCH" "/host$LAB_SCRATCH"
    # "python3" in the chroot is the interpreter the host chose (venv or the test's own).
    # A wrapper, not a symlink: Python finds its venv from the path it was started as.
    mkdir -p /host/tmp/.lab-bin
    for name in python3 python; do
        printf '#!/bin/sh\nexec "%s" "$@"\n' "$LAB_PYTHON" >"/host/tmp/.lab-bin/$name"
        chmod 755 "/host/tmp/.lab-bin/$name"
    done
fi

/bin/lab-agent "${LAB_CTL:-/dev/ttyS1}" &

# PID 1 must reap orphans (daemons such as usbipd -D reparent to us).
while :; do
    wait
    sleep 1
done
