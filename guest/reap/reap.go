// Package reap collects the exit status of every child of the guest agent,
// PID 1's duty: the processes it started and the orphans the kernel hands
// it.
package reap

import (
	"context"
	"errors"
	"os"
	"os/signal"

	"golang.org/x/sys/unix"
)

// Reap waits for every child that exits, calling exited (if not nil) with
// its pid and status, until ctx is done. Children that ended before it
// was called are collected at once.
func Reap(ctx context.Context, exited func(pid int, ws unix.WaitStatus)) {
	sigs := make(chan os.Signal, 32)
	signal.Notify(sigs, unix.SIGCHLD)
	defer signal.Stop(sigs)
	for {
		for {
			var ws unix.WaitStatus
			pid, err := unix.Wait4(-1, &ws, unix.WNOHANG, nil)
			if pid <= 0 || errors.Is(err, unix.ECHILD) {
				break
			}
			if exited != nil {
				exited(pid, ws)
			}
		}
		select {
		case <-sigs:
		case <-ctx.Done():
			return
		}
	}
}
