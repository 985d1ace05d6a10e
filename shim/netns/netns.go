// Package netns keeps a container's host-side network namespace for the
// hooks and for the VM's wiring: it makes the namespace when the spec asks
// for a new one without a path (mounted on a file, as CNI's callers do),
// and holds a host process inside it whose pid the OCI hooks are given
// (nerdctl's createRuntime hook configures /proc/<pid>/ns/net). The holder
// is the shim's own binary re-executed (see HolderMain); it dies with the
// shim.
package netns

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/qemu-shim/qemu-shim/internal/nsthread"
)

// holderEnv, in the environment of the shim's binary, makes it the holder
// of the namespace it names.
const holderEnv = "QEMU_SHIM_NETNS_HOLDER"

// Namespace is a held network namespace.
type Namespace struct {
	// Path is the namespace's file.
	Path string
	// Made says this package made (and will remove) the namespace.
	Made   bool
	holder *exec.Cmd
	stdin  io.WriteCloser
}

// Hold holds the namespace at path, or, with path empty, makes a new one
// mounted at newPath first. On error nothing is left.
func Hold(path, newPath string) (_ *Namespace, retErr error) {
	n := &Namespace{Path: path}
	if path == "" {
		if err := create(newPath); err != nil {
			return nil, err
		}
		n.Path, n.Made = newPath, true
	}
	defer func() {
		if retErr != nil {
			n.Close()
		}
	}()
	self, err := os.Executable()
	if err != nil {
		return n, err
	}
	cmd := exec.Command(self)
	cmd.Env = []string{holderEnv + "=" + n.Path}
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: unix.SIGKILL}
	n.stdin, err = cmd.StdinPipe()
	if err != nil {
		return n, err
	}
	ready, err := cmd.StdoutPipe()
	if err != nil {
		return n, err
	}
	if err := cmd.Start(); err != nil {
		return n, fmt.Errorf("start the holder of network namespace %s: %w", n.Path, err)
	}
	n.holder = cmd
	// The holder says "ok" once it is inside, or why not and exits.
	b, _ := io.ReadAll(io.LimitReader(ready, 4096))
	if string(b) != "ok\n" {
		return n, fmt.Errorf("hold network namespace %s: %s", n.Path, b)
	}
	return n, nil
}

// Pid is the holder's pid: /proc/<pid>/ns/net is the namespace.
func (n *Namespace) Pid() int {
	if n.holder == nil || n.holder.Process == nil {
		return 0
	}
	return n.holder.Process.Pid
}

// Close ends the holder and removes the namespace if it was made here.
func (n *Namespace) Close() error {
	if n.holder != nil {
		n.stdin.Close() // the holder exits at end of input
		n.holder.Process.Kill()
		n.holder.Wait()
		n.holder = nil
	}
	if n.Made {
		if err := unix.Unmount(n.Path, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("unmount network namespace %s: %w", n.Path, err)
		}
		if err := os.Remove(n.Path); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
		n.Made = false
	}
	return nil
}

// Remove removes a namespace this package made at path, for the cleanup
// after a shim that died without doing it (its holder died with it).
func Remove(path string) error {
	n := &Namespace{Path: path, Made: true}
	return n.Close()
}

// create makes a network namespace mounted at path.
func create(path string) error {
	if err := nsthread.NewNetNamespace(path, nil); err != nil {
		return fmt.Errorf("make network namespace %s: %w", path, err)
	}
	return nil
}

// IsHolder says whether this process was started as a holder; call it
// from an init function, where the main goroutine still runs on the main
// thread, and lock it there: /proc/<pid>/ns/net is the main thread's.
func IsHolder() bool {
	if os.Getenv(holderEnv) == "" {
		return false
	}
	runtime.LockOSThread()
	return true
}

// HolderMain enters the namespace, says so, and waits for the end of its
// input (the shim closing it, or dying). It never returns.
func HolderMain() {
	path := os.Getenv(holderEnv)
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err == nil {
		err = unix.Setns(fd, unix.CLONE_NEWNET)
		unix.Close(fd)
	}
	if err != nil {
		fmt.Printf("enter %s: %v\n", path, err)
		os.Exit(1)
	}
	fmt.Println("ok")
	os.Stdout.Close()
	io.Copy(io.Discard, os.Stdin)
	os.Exit(0)
}
