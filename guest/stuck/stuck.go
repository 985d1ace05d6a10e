// Package stuck describes what a guest service call that runs far longer
// than it should is waiting on: the service's goroutines, and the guest's
// processes with their state and the kernel function they sleep in. A
// call the host gives up on otherwise leaves nothing behind to explain it.
package stuck

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/containerd/log"
)

// MaxReport bounds a report: it goes to the console, whose tail the host
// keeps (16 KiB).
const MaxReport = 6 << 10

// Watch logs a warning with a Report if the call named what has not
// returned after after; the returned stop ends the watch.
func Watch(ctx context.Context, what string, after time.Duration, procRoot string, keep func(stack string) bool) (stop func()) {
	began := time.Now()
	t := time.AfterFunc(after, func() {
		log.G(ctx).WithField("call", what).WithField("running", time.Since(began).Round(time.Millisecond)).
			Warnf("still running:\n%s", Report(procRoot, keep))
	})
	return func() { t.Stop() }
}

// Report lists the goroutines whose stack keep accepts (all if keep is
// nil), then the processes under procRoot (normally /proc), at most
// MaxReport bytes in all.
func Report(procRoot string, keep func(stack string) bool) string {
	var b strings.Builder
	buf := make([]byte, 256<<10)
	buf = buf[:runtime.Stack(buf, true)]
	for _, g := range bytes.Split(buf, []byte("\n\n")) {
		if keep == nil || keep(string(g)) {
			b.Write(g)
			b.WriteString("\n\n")
		}
	}
	b.WriteString(Processes(procRoot))
	s := b.String()
	if len(s) > MaxReport {
		s = s[:MaxReport] + "\n[cut]"
	}
	return s
}

// Processes lists the processes under procRoot, one a line: pid, parent,
// state, the kernel function it sleeps in, and its command line.
func Processes(procRoot string) string {
	entries, err := os.ReadDir(procRoot)
	if err != nil {
		return fmt.Sprintf("processes: %v\n", err)
	}
	var pids []int
	for _, e := range entries {
		if pid, err := strconv.Atoi(e.Name()); err == nil {
			pids = append(pids, pid)
		}
	}
	sort.Ints(pids)
	var b strings.Builder
	b.WriteString("pid ppid state wchan cmdline\n")
	for _, pid := range pids {
		dir := filepath.Join(procRoot, strconv.Itoa(pid))
		ppid, state := statFields(dir)
		wchan, _ := os.ReadFile(filepath.Join(dir, "wchan"))
		cmdline, _ := os.ReadFile(filepath.Join(dir, "cmdline"))
		cmd := strings.TrimSpace(strings.ReplaceAll(string(cmdline), "\x00", " "))
		if len(cmd) > 120 {
			cmd = cmd[:120] + "…"
		}
		if cmd == "" {
			continue // a kernel thread
		}
		w := string(wchan)
		if w == "" || w == "0" {
			w = "-"
		}
		fmt.Fprintf(&b, "%d %s %s %s %s\n", pid, ppid, state, w, cmd)
	}
	return b.String()
}

// statFields reads a process's parent and state from its stat file, whose
// second field (the command, in parentheses) may hold spaces.
func statFields(dir string) (ppid, state string) {
	stat, err := os.ReadFile(filepath.Join(dir, "stat"))
	if err != nil {
		return "?", "?"
	}
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 {
		return "?", "?"
	}
	f := strings.Fields(string(stat[i+1:]))
	if len(f) < 2 {
		return "?", "?"
	}
	return f[1], f[0]
}
