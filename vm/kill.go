package vm

import (
	"context"
	"fmt"
	"syscall"
)

// Kill ends a VM that may not answer any more (a hung guest, a stopped
// QEMU): QEMU gets SIGKILL at once, with none of Shutdown's asking first,
// and the VM is cleaned up as after any exit.
func (i *Instance) Kill(ctx context.Context) error {
	if already, err := i.beginShutdown("kill"); already || err != nil {
		return err
	}
	i.proc.signal(syscall.SIGKILL)
	if !i.proc.waitExit(sigkillWait) {
		return fmt.Errorf("vm %s: QEMU (pid %d) did not exit after SIGKILL", i.cfg.ID, i.proc.pid())
	}
	i.cleanup(ctx)
	return nil
}
