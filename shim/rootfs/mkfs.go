package rootfs

import (
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"strings"
	"sync/atomic"

	"github.com/containerd/log"
)

// prezeroedRefused is set once mke2fs has refused assume_storage_prezeroed.
var prezeroedRefused atomic.Bool

// mkfsExt4 runs mkfs.ext4 on an image file made for it, which reads as
// zeros: extended are its -E options, args the rest (the image and size
// last). mke2fs is told the storage is zeroed, so it marks the inode
// tables zeroed and the guest's kernel does not spend the container's
// first seconds writing zeros over them (its ext4lazyinit thread: 2 MiB of
// a 2 GiB layer, through guest memory and the virtual disk). mke2fs before
// 1.47 does not know the option: it is then run without it.
func mkfsExt4(ctx context.Context, extended []string, args ...string) error {
	run := func(ext []string) ([]byte, error) {
		a := append([]string{"-q", "-F"}, args...)
		if len(ext) > 0 {
			a = append([]string{"-E", strings.Join(ext, ",")}, a...)
		}
		return exec.CommandContext(ctx, "mkfs.ext4", a...).CombinedOutput()
	}
	if !prezeroedRefused.Load() {
		out, err := run(append(extended[:len(extended):len(extended)], "assume_storage_prezeroed=1"))
		if err == nil {
			return nil
		}
		// mke2fs names the option it does not know.
		if !strings.Contains(string(out), "assume_storage_prezeroed") {
			return fmt.Errorf("mkfs.ext4: %w: %s", err, bytes.TrimSpace(out))
		}
		log.G(ctx).WithField("output", string(bytes.TrimSpace(out))).Debug("mkfs.ext4 does not know assume_storage_prezeroed: images are made without it")
		prezeroedRefused.Store(true)
	}
	if out, err := run(extended); err != nil {
		return fmt.Errorf("mkfs.ext4: %w: %s", err, bytes.TrimSpace(out))
	}
	return nil
}
