#!/bin/busybox sh
# Stage 1 of the xtask VM guest, /init of the initramfs: load the 9p and overlay modules, mount
# the host's / read-only under a tmpfs overlay, mount the per-run control share at /run/xtask-vm,
# and switch_root into stage 2, which the host wrote there. Everything the guest writes to / lands
# in the tmpfs, so nothing reaches the host except through the read-write shares.
/bin/busybox mkdir -p /bin /proc /sys /dev /lower /rw /newroot
/bin/busybox --install -s /bin
export PATH=/bin

fail() {
	echo "xtask-vm stage 1: $*"
	dmesg | tail -n 40
	poweroff -f
}

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
exec >/dev/console 2>&1 </dev/null

while read -r module; do
	insmod "/mods/$module" || fail "insmod $module"
done </mods/order

opts=trans=virtio,version=9p2000.L,msize=512000
mount -t 9p -o "ro,$opts,cache=loose" xtask-root /lower || fail "mounting the host's /"
mount -t tmpfs -o mode=0755 tmpfs /rw
mkdir /rw/upper /rw/work
mount -t overlay -o lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work overlay /newroot ||
	fail "mounting the overlay"
mount -t tmpfs -o mode=0755 tmpfs /newroot/run
mkdir /newroot/run/xtask-vm
mount -t 9p -o "$opts" xtask-ctl /newroot/run/xtask-vm || fail "mounting the control share"

umount /proc /sys
umount -l /dev
exec switch_root /newroot /bin/busybox sh /run/xtask-vm/stage2.sh
