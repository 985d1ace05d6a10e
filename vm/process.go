package vm

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// process is a running QEMU. It is started from a goroutine locked to its
// OS thread that stays until QEMU exits: the parent-death signal fires when
// the thread that forked dies, so QEMU dies with the shim and is never left
// behind by a crash.
type process struct {
	cmd    *exec.Cmd
	stderr *tailBuffer
	exited chan struct{}
	state  *os.ProcessState
	err    error
}

func startProcess(binary string, args []string, extra []*os.File) (*process, error) {
	p := &process{stderr: &tailBuffer{max: 8192}, exited: make(chan struct{})}
	p.cmd = exec.Command(binary, args...)
	p.cmd.Stdout = p.stderr
	p.cmd.Stderr = p.stderr
	p.cmd.ExtraFiles = extra
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	started := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		if err := p.cmd.Start(); err != nil {
			started <- err
			close(p.exited)
			return
		}
		started <- nil
		p.err = p.cmd.Wait()
		p.state = p.cmd.ProcessState
		close(p.exited)
	}()
	if err := <-started; err != nil {
		return nil, fmt.Errorf("start %s: %w", binary, err)
	}
	return p, nil
}

func (p *process) pid() int { return p.cmd.Process.Pid }

func (p *process) signal(sig syscall.Signal) {
	select {
	case <-p.exited:
	default:
		p.cmd.Process.Signal(sig)
	}
}

// waitExit waits up to d for QEMU to exit.
func (p *process) waitExit(d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-p.exited:
		return true
	case <-t.C:
		return false
	}
}

// describe says how QEMU ended, with what it printed last.
func (p *process) describe() string {
	var b strings.Builder
	if p.state != nil {
		b.WriteString(p.state.String())
	}
	if out := strings.TrimSpace(p.stderr.String()); out != "" {
		fmt.Fprintf(&b, ": %s", out)
	}
	return b.String()
}

// tailBuffer keeps the last max bytes written to it.
type tailBuffer struct {
	mu  sync.Mutex
	max int
	buf []byte
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf = append(t.buf, p...)
	if len(t.buf) > t.max {
		t.buf = t.buf[len(t.buf)-t.max:]
	}
	return len(p), nil
}

func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return string(t.buf)
}

// PidFileName is QEMU's pid file inside a VM's state directory.
const PidFileName = "qemu.pid"

// KillStale ends a QEMU left running by an earlier process for the state
// directory dir, if its pid file names a live QEMU that belongs to dir. It
// returns the pid it killed, or 0.
func KillStale(dir string) (int, error) {
	b, err := os.ReadFile(filepath.Join(dir, PidFileName))
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return 0, nil
		}
		return 0, err
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 1 {
		return 0, fmt.Errorf("pid file in %s: %q is not a pid", dir, b)
	}
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil || !bytes.Contains(cmdline, []byte(dir)) {
		return 0, nil // gone, or the pid was reused by something else
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
		return 0, fmt.Errorf("kill stale QEMU %d: %w", pid, err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
			return pid, nil
		}
		// Not our child: we cannot wait(2) for it, only look.
		time.Sleep(10 * time.Millisecond)
	}
	return pid, fmt.Errorf("stale QEMU %d did not exit after SIGKILL", pid)
}
