package cri

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
)

// critestSkip names, by the text of their specs, what cannot run on these
// machines whatever the handler: specs that pull images from a registry
// (there is none here; only busybox is imported under critest's name),
// the image service's own pull and remove specs, and specs that need
// tools busybox lacks.
var critestSkip = strings.Join([]string{
	`[Pp]ull`, `image`, `Image`, `nginx`, `httpd`, `test-image`, `NRI`, `digest`, `registry`,
}, "|")

// vmCannot are specs that no runtime running a pod in a VM can pass: what
// they check crosses the VM's boundary. Each failure is reported, not
// counted against the handler.
var vmCannot = map[string]string{
	"[k8s.io] Container Mount Propagation runtime should support mount propagation [It] mount with 'rshared' should support propagation from host to container and vice versa": "a mount made in the guest cannot appear on the host",
	"[k8s.io] Security Context NamespaceOption [It] runtime should support HostNetwork is true":                                                                                "the node's network namespace is not the VM's: hostNetwork pods are refused",
}

// critestResults runs critest with a handler and returns the failed specs,
// by name, and its summary.
func critestResults(ctx context.Context, t *testing.T, handler string) (failed []string, summary string) {
	t.Helper()
	report := filepath.Join(t.TempDir(), "report")
	os.MkdirAll(report, 0o755)
	ep := "unix://" + env.Socket
	args := []string{"--runtime-endpoint", ep, "--image-endpoint", ep, "--runtime-handler", handler,
		"--ginkgo.skip", critestSkip, "--ginkgo.no-color", "--ginkgo.v", "--ginkgo.timeout", "30m"}
	// QEMU_SHIM_CRITEST_FOCUS runs only the specs it matches (while working
	// on them).
	if f := os.Getenv("QEMU_SHIM_CRITEST_FOCUS"); f != "" {
		args = append(args, "--ginkgo.focus", f)
	}
	cmd := exec.CommandContext(ctx, filepath.Join(env.clients, "critest"), args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.Run() // failing specs make it exit non-zero: the specs are the result
	os.WriteFile(filepath.Join(os.TempDir(), "critest-"+handler+".log"), out.Bytes(), 0o644)
	text := out.String()
	// Ginkgo's closing summary lists each failed spec as "  [FAIL] name".
	for _, m := range regexp.MustCompile(`(?m)^  \[FAIL\] (.+)$`).FindAllStringSubmatch(text, -1) {
		failed = append(failed, strings.TrimSpace(m[1]))
	}
	if m := regexp.MustCompile(`Ran \d+ of \d+ Specs.*\n.*`).FindString(text); m != "" {
		summary = m
	}
	sort.Strings(failed)
	return failed, summary
}

// TestCritest: the CRI validation suite passes with the qemu handler
// wherever it passes with runc on this machine.
func TestCritest(t *testing.T) {
	ctx := requireEnv(t)
	if _, err := os.Stat(filepath.Join(env.clients, "critest")); err != nil {
		t.Skipf("skipping: no critest: %v", err)
	}
	runcFailed, runcSummary := critestResults(ctx, t, "runc")
	t.Logf("runc: %s", runcSummary)
	qemuFailed, qemuSummary := critestResults(ctx, t, "qemu")
	t.Logf("qemu: %s", qemuSummary)
	runcFails := map[string]bool{}
	for _, f := range runcFailed {
		runcFails[f] = true
	}
	for _, f := range qemuFailed {
		switch {
		case runcFails[f]:
		case vmCannot[f] != "":
			t.Logf("fails with qemu as it must in a VM (%s): %s", vmCannot[f], f)
		default:
			t.Errorf("fails with qemu, passes with runc: %s", f)
		}
	}
}
