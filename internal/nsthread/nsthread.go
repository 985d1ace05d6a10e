// Package nsthread runs code that changes its thread's namespaces (unshare,
// setns) on a thread of its own that is thrown away afterwards, and never
// on the process's main thread: /proc/self shows the main thread's
// namespaces and mounts, which must stay the process's own.
package nsthread

import (
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
