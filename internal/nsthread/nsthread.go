// Package nsthread runs code that changes its thread's namespaces (unshare,
// setns) on a thread of its own that is thrown away afterwards, and never
// on the process's main thread: /proc/self shows the main thread's
// namespaces and mounts, which must stay the process's own.
package nsthread

import (
	"fmt"
	"os"
	"runtime"

	"golang.org/x/sys/unix"
)

// Do runs fn on a locked OS thread that is not the main thread and ends
// with it.
func Do(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		if unix.Gettid() == unix.Getpid() {
			// The main thread: hold it while another thread does the work,
			// then give it back untouched.
			defer runtime.UnlockOSThread()
			errc <- Do(fn)
			return
		}
		// Never unlocked: the thread ends with the goroutine.
		errc <- fn()
	}()
	return <-errc
}

// NewNetNamespace makes a network namespace mounted on a new file at path
// (as CNI's callers do) and runs inside, if not nil, in it. On error
// nothing is left.
func NewNetNamespace(path string, inside func() error) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_RDONLY, 0o444)
	if err != nil {
		return fmt.Errorf("network namespace file: %w", err)
	}
	f.Close()
	err = Do(func() error {
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			return fmt.Errorf("unshare network namespace: %w", err)
		}
		if err := unix.Mount("/proc/thread-self/ns/net", path, "", unix.MS_BIND, ""); err != nil {
			return fmt.Errorf("mount network namespace on %s: %w", path, err)
		}
		if inside != nil {
			return inside()
		}
		return nil
	})
	if err != nil {
		unix.Unmount(path, unix.MNT_DETACH)
		os.Remove(path)
		return err
	}
	return nil
}
