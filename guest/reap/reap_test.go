package reap

import (
	"bufio"
	"context"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

type exit struct {
	pid int
	ws  unix.WaitStatus
}

// start runs sh -c script with stdin, released (Reap is its only reaper),
// and returns its pid and the first line it printed.
func start(t *testing.T, script string, stdin *os.File) (int, string) {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	p, err := os.StartProcess("/bin/sh", []string{"sh", "-c", script}, &os.ProcAttr{Files: []*os.File{stdin, w, os.Stderr}})
	w.Close()
	if err != nil {
		t.Skipf("no shell: %v", err)
	}
	pid := p.Pid
	p.Release()
	line, _ := bufio.NewReader(r).ReadString('\n')
	return pid, strings.TrimSpace(line)
}

func TestReap(t *testing.T) {
	// Orphans come to a subreaper as they come to PID 1.
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		t.Skipf("cannot become a subreaper: %v", err)
	}
	defer unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)

	// A child that exits before Reap runs is collected too.
	early, _ := start(t, "exit 7", nil)

	exits := make(chan exit, 16)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		Reap(ctx, func(pid int, ws unix.WaitStatus) { exits <- exit{pid, ws} })
	}()
	defer func() { cancel(); <-done }()

	// A child, and its own child orphaned when it exits: that one ends
	// when its parent's stdin does, after its parent (the shell gives a
	// background job /dev/null as stdin, hence fd 3).
	hold, release, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer release.Close()
	parent, line := start(t, "exec 3<&0; (read x <&3; exit 5) & echo $!; exit 3", hold)
	hold.Close()
	orphan, err := strconv.Atoi(line)
	if err != nil {
		t.Fatalf("orphan pid %q: %v", line, err)
	}

	want := map[int]int{early: 7, parent: 3, orphan: 5}
	timeout := time.After(30 * time.Second)
	for len(want) > 0 {
		if _, ok := want[parent]; !ok {
			release.Close() // the parent is gone: let the orphan end
		}
		select {
		case e := <-exits:
			status, ok := want[e.pid]
			if !ok {
				continue // some other child of the test binary
			}
			if !e.ws.Exited() || e.ws.ExitStatus() != status {
				t.Errorf("pid %d: status %v, want exit %d", e.pid, e.ws, status)
			}
			delete(want, e.pid)
		case <-timeout:
			t.Fatalf("not reaped: %v", want)
		}
	}
}
