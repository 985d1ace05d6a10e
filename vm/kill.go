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
	if err := i.state.transition(i.cfg.ID, "kill", StateRunning, StateShutdown); err != nil {
		if i.state.get() == StateShutdown {
			<-i.cleanupDone
			return nil
		}
		return err
	}
	i.stopOnce.Do(func() { close(i.stopping) })
	i.proc.signal(syscall.SIGKILL)
	if !i.proc.waitExit(sigkillWait) {
		return fmt.Errorf("vm %s: QEMU (pid %d) did not exit after SIGKILL", i.cfg.ID, i.proc.pid())
	}
	i.cleanup(ctx)
	return nil
}
