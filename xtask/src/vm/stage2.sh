# Stage 2 of the xtask VM guest, PID 1 in the host's root (under the tmpfs overlay): mount the
# kernel filesystems, the scratch share and the kernel's modules, prepare what tests expect
# (aesni_intel, lo), run the command with its output on the two virtio-serial ports, and leave its
# exit code in the control share. The host treats a missing exit-code file as a failure, so every
# early exit powers off without one.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
bb=/bin/busybox
ctl=/run/xtask-vm

fail() {
	echo "xtask-vm stage 2: $*"
	# Tells the host this is a setup failure, not a crash worth another boot.
	echo "$*" >$ctl/boot-error
	$bb dmesg | $bb tail -n 40
	$bb poweroff -f
}

$bb mount -t proc proc /proc
$bb mount -t sysfs sysfs /sys
$bb mount -t devtmpfs devtmpfs /dev
exec >/dev/console 2>&1 </dev/null
$bb mkdir -p /dev/pts /dev/shm
$bb mount -t devpts devpts /dev/pts
$bb mount -t tmpfs tmpfs /dev/shm
# /tmp stays the host's, under the overlay: a project checked out there must stay visible.
$bb mount -t bpf bpf /sys/fs/bpf || fail "mounting bpffs"
$bb mount -t cgroup2 cgroup2 /sys/fs/cgroup
$bb mount -t tracefs tracefs /sys/kernel/tracing

. $ctl/vars
$bb mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 xtask-scratch "$scratch" ||
	fail "mounting the scratch share on $scratch"
# A kernel unpacked under the target dir rather than installed: its modules go where modprobe
# (the kernel's request_module too) looks. The mount point is made in the tmpfs overlay.
if [ -n "$modules" ]; then
	$bb mkdir -p "/lib/modules/$kernel" &&
		$bb mount -o bind "$modules" "/lib/modules/$kernel" ||
		fail "mounting $modules on /lib/modules/$kernel"
fi

# No udev here: aes-generic would satisfy the AES lookup, so the accelerated one must be asked for.
modprobe aesni_intel || fail "modprobe aesni_intel"
$bb ip link set lo up || fail "bringing lo up"
$bb hostname xsteer-vm

for port in /sys/class/virtio-ports/*; do
	case $($bb cat "$port/name") in
	xtask.stdout) out=/dev/${port##*/} ;;
	xtask.stderr) err=/dev/${port##*/} ;;
	esac
done
[ -n "$out" ] && [ -n "$err" ] || fail "virtio-serial ports xtask.stdout/xtask.stderr not found"

: >$ctl/started
/bin/sh $ctl/run.sh <"/dev/null" >"$out" 2>"$err"
echo $? >$ctl/exit-code
$bb sync
$bb poweroff -f
