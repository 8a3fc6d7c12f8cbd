package libvirtd

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// attachLoop binds image to a free loop device, read-only, released by the kernel
// once it is unmounted (autoclear), and returns the device open: autoclear also
// fires on the last close, so the caller mounts it before closing it.
func attachLoop(image string) (*os.File, error) {
	f, err := os.Open(image)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	ctl, err := os.OpenFile("/dev/loop-control", os.O_RDWR, 0)
	if err != nil {
		return nil, fmt.Errorf("loop devices: %w (is the loop module loaded?)", err)
	}
	defer ctl.Close()
	for tries := 0; tries < 8; tries++ {
		n, err := unix.IoctlRetInt(int(ctl.Fd()), unix.LOOP_CTL_GET_FREE)
		if err != nil {
			return nil, fmt.Errorf("find a free loop device: %w", err)
		}
		dev := fmt.Sprintf("/dev/loop%d", n)
		lf, err := os.OpenFile(dev, os.O_RDONLY, 0)
		if err != nil {
			return nil, fmt.Errorf("open %s: %w", dev, err)
		}
		cfg := unix.LoopConfig{Fd: uint32(f.Fd())}
		cfg.Info.Flags = unix.LO_FLAGS_READ_ONLY | unix.LO_FLAGS_AUTOCLEAR
		copy(cfg.Info.File_name[:], image)
		err = unix.IoctlLoopConfigure(int(lf.Fd()), &cfg)
		if err == nil {
			return lf, nil
		}
		lf.Close()
		if err != unix.EBUSY { // EBUSY: taken between GET_FREE and CONFIGURE
			return nil, fmt.Errorf("configure %s for %s: %w", dev, image, err)
		}
	}
	return nil, fmt.Errorf("no free loop device for %s", image)
}
