package hooks

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

func TestRunGivesStateArgsEnvAndStopsAtFailure(t *testing.T) {
	dir := t.TempDir()
	out := filepath.Join(dir, "out")
	state := specs.State{Version: specs.Version, ID: "c1", Status: specs.StateCreating, Pid: 42, Bundle: "/b",
		Annotations: map[string]string{"k": "v"}}
	hooks := []specs.Hook{
		{Path: "/bin/sh", Args: []string{"sh", "-c", `cat > "$OUT"; echo " $0 $1" >> "$OUT"`, "first", "arg"}, Env: []string{"OUT=" + out}},
		{Path: "/bin/sh", Args: []string{"sh", "-c", "echo broken >&2; exit 3"}},
		{Path: "/bin/sh", Args: []string{"sh", "-c", "touch " + filepath.Join(dir, "never")}},
	}
	err := Run(context.Background(), "createRuntime", hooks, state)
	if err == nil || !strings.Contains(err.Error(), "createRuntime hook 1 (/bin/sh)") || !strings.Contains(err.Error(), "broken") {
		t.Fatalf("error %v: want the failing hook with its output", err)
	}
	b, _ := os.ReadFile(out)
	body, extra, _ := strings.Cut(string(b), "\n")
	body = strings.TrimSuffix(body, " first arg")
	if extra != "" || !strings.HasSuffix(string(b), " first arg\n") {
		t.Errorf("first hook wrote %q", b)
	}
	var got specs.State
	if err := json.Unmarshal([]byte(strings.TrimSpace(body)), &got); err != nil || got.ID != "c1" || got.Pid != 42 || got.Annotations["k"] != "v" || got.Status != specs.StateCreating {
		t.Errorf("state on stdin %q: %+v %v", body, got, err)
	}
	if _, err := os.Stat(filepath.Join(dir, "never")); err == nil {
		t.Error("a hook after the failed one ran")
	}
}

func TestRunTimeoutAndBadPaths(t *testing.T) {
	one := 1
	err := Run(context.Background(), "poststart", []specs.Hook{{Path: "/bin/sleep", Args: []string{"sleep", "30"}, Timeout: &one}}, specs.State{})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("slow hook: %v", err)
	}
	if err := Run(context.Background(), "prestart", []specs.Hook{{Path: "sh"}}, specs.State{}); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Errorf("relative path: %v", err)
	}
	if err := Run(context.Background(), "prestart", []specs.Hook{{Path: "/nonexistent/hook"}}, specs.State{}); err == nil || !strings.Contains(err.Error(), "/nonexistent/hook") {
		t.Errorf("missing binary: %v", err)
	}
}
