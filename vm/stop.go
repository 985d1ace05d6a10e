package vm

import (
	"context"
	"fmt"
	"syscall"
	"time"

	"github.com/containerd/log"

	agentapi "github.com/qemu-shim/qemu-shim/api/agent/v1"
	"github.com/qemu-shim/qemu-shim/internal/mountutil"
)

// watchExit cleans up after QEMU whenever it exits, also unasked.
func (i *Instance) watchExit() {
	<-i.proc.exited
	select {
	case <-i.stopping:
		return // Start or Shutdown cleans up
	default:
	}
	ctx := context.Background()
	log.G(ctx).WithField("vm", i.cfg.ID).WithField("status", i.proc.describe()).Warn("QEMU exited unexpectedly")
	if i.state.transition(i.cfg.ID, "notice QEMU's exit", StateRunning, StateShutdown) == nil {
		i.cleanup(ctx)
	}
}

// beginShutdown moves a running VM to Shutdown for Shutdown or Kill. already
// says another call has shut it down (its cleanup then done).
func (i *Instance) beginShutdown(what string) (already bool, err error) {
	if err := i.state.transition(i.cfg.ID, what, StateRunning, StateShutdown); err != nil {
		if i.state.get() == StateShutdown {
			<-i.cleanupDone
			return true, nil
		}
		return false, err
	}
	i.stopOnce.Do(func() { close(i.stopping) })
	return false, nil
}

// Shutdown stops the VM: it asks the agent to sync and power off, then
// presses the ACPI power button, then sends SIGTERM, then SIGKILL, each with
// a bounded wait; then it removes every resource of the VM. Shutting down
// a VM that is already shut down waits for that to finish.
func (i *Instance) Shutdown(ctx context.Context) error {
	if already, err := i.beginShutdown("shut down"); already || err != nil {
		return err
	}
	l := log.G(ctx).WithField("vm", i.cfg.ID)
	exited := false
	if i.agent != nil {
		actx, cancel := context.WithTimeout(ctx, agentShutdownWait)
		_, err := i.agent.Shutdown(actx, &agentapi.ShutdownRequest{})
		cancel()
		if err != nil {
			l.WithError(err).Debug("agent shutdown")
			exited = i.proc.waitExit(agentShutdownWait)
		} else {
			// The guest answers once it has unmounted and synced what it
			// holds: every write it made is with QEMU, which flushes its
			// disks as it exits on SIGTERM. Its own power-off (under TCG
			// about 0.1 s more of the guest's kernel) is not waited for.
			i.proc.signal(syscall.SIGTERM)
			exited = i.proc.waitExit(sigtermWait)
		}
	}
	if !exited && i.qmp != nil {
		qctx, cancel := context.WithTimeout(ctx, time.Second)
		err := i.qmp.Run(qctx, "system_powerdown", nil, nil)
		cancel()
		if err != nil {
			l.WithError(err).Debug("ACPI power-down")
		}
		exited = i.proc.waitExit(powerdownWait)
	}
	if !exited {
		l.Warn("VM did not power off: sending SIGTERM to QEMU")
		i.proc.signal(syscall.SIGTERM)
		exited = i.proc.waitExit(sigtermWait)
	}
	if !exited {
		l.Warn("QEMU ignored SIGTERM: sending SIGKILL")
		i.proc.signal(syscall.SIGKILL)
		if !i.proc.waitExit(sigkillWait) {
			return fmt.Errorf("vm %s: QEMU (pid %d) did not exit after SIGKILL", i.cfg.ID, i.proc.pid())
		}
	}
	i.cleanup(ctx)
	return nil
}

// cleanup closes every connection and removes the state directory. QEMU
// must have exited.
func (i *Instance) cleanup(ctx context.Context) {
	i.cleanupOnce.Do(func() {
		defer close(i.cleanupDone)
		i.agentConn.close()
		i.closeTaskClient()
		if i.host != nil {
			i.host.Close()
		}
		if i.qmp != nil {
			i.qmp.Close()
		}
		if i.link != nil {
			i.link.release()
		}
		i.confinement.release()
		if i.memory != nil {
			i.memory.Close()
		}
		i.stopVirtiofsd()
		if i.console != nil {
			i.console.stop()
		}
		if err := mountutil.RemoveAll(i.stateDir); err != nil {
			log.G(ctx).WithError(err).WithField("vm", i.cfg.ID).Warn("remove state directory")
		}
	})
}

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
