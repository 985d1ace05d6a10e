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
	"unicode/utf8"

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

// Report lists the processes under procRoot (normally /proc), then the
// goroutines whose stack keep accepts (all if keep is nil) while they fit:
// at most MaxReport bytes in all.
func Report(procRoot string, keep func(stack string) bool) string {
	var b strings.Builder
	b.WriteString(cut(Processes(procRoot), MaxReport/2, "\n[cut]\n"))
	buf := make([]byte, 256<<10)
	buf = buf[:runtime.Stack(buf, true)]
	for _, g := range bytes.Split(buf, []byte("\n\n")) {
		if keep != nil && !keep(string(g)) {
			continue
		}
		if b.Len()+len(g)+2 > MaxReport {
			b.WriteString("\n[more goroutines cut]")
			break
		}
		b.WriteString("\n")
		b.Write(g)
		b.WriteString("\n")
	}
	return b.String()
}

// cut shortens s to at most n bytes, on a character boundary, and marks
// where it was cut.
func cut(s string, n int, mark string) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n] + mark
}

// Processes lists the processes under procRoot, one a line: pid, parent,
// state, the kernel function it sleeps in, and its command line (its name
// in brackets when it has none: a zombie, or a kernel thread, which is
// left out unless it is blocked); then the kernel stack of each process
// blocked in the kernel (state D).
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
	var b, stacks strings.Builder
	b.WriteString("pid ppid state wchan cmdline\n")
	for _, pid := range pids {
		dir := filepath.Join(procRoot, strconv.Itoa(pid))
		comm, ppid, state := statFields(dir)
		wchan, _ := os.ReadFile(filepath.Join(dir, "wchan"))
		cmdline, _ := os.ReadFile(filepath.Join(dir, "cmdline"))
		cmd := cut(strings.TrimSpace(strings.ReplaceAll(string(cmdline), "\x00", " ")), 120, "…")
		if cmd == "" {
			if state != "Z" && state != "D" {
				continue // a kernel thread at work or asleep
			}
			cmd = "[" + comm + "]"
		}
		w := string(wchan)
		if w == "" || w == "0" {
			w = "-"
		}
		fmt.Fprintf(&b, "%d %s %s %s %s\n", pid, ppid, state, w, cmd)
		if state == "D" {
			if st, err := os.ReadFile(filepath.Join(dir, "stack")); err == nil {
				fmt.Fprintf(&stacks, "%d's kernel stack:\n%s", pid, cut(string(st), 1024, "\n[cut]\n"))
			}
		}
	}
	b.WriteString(stacks.String())
	return b.String()
}

// statFields reads a process's name, parent and state from its stat file,
// whose second field (the name, in parentheses) may hold spaces.
func statFields(dir string) (comm, ppid, state string) {
	stat, err := os.ReadFile(filepath.Join(dir, "stat"))
	if err != nil {
		return "?", "?", "?"
	}
	open, end := bytes.IndexByte(stat, '('), bytes.LastIndexByte(stat, ')')
	if open < 0 || end < open {
		return "?", "?", "?"
	}
	f := strings.Fields(string(stat[end+1:]))
	if len(f) < 2 {
		return "?", "?", "?"
	}
	return string(stat[open+1 : end]), f[1], f[0]
}
