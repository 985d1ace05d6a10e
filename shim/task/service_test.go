package task

import (
	"os"
	"path/filepath"
	"testing"

	eventstypes "github.com/containerd/containerd/api/events"
)

func TestOnlyTaskEventsUnderTheirTopicsPass(t *testing.T) {
	for _, tc := range []struct {
		topic string
		event any
		want  bool
	}{
		{"/tasks/exit", &eventstypes.TaskExit{}, true},
		{"/tasks/oom", &eventstypes.TaskOOM{}, true},
		{"/tasks/exec-started", &eventstypes.TaskExecStarted{}, true},
		{"/tasks/exit", &eventstypes.TaskOOM{}, false},                // a topic that lies
		{"/containers/delete", &eventstypes.ContainerDelete{}, false}, // not a task event
		{"/images/create", &eventstypes.ImageCreate{}, false},
	} {
		if got := taskEvent(tc.topic, tc.event); got != tc.want {
			t.Errorf("taskEvent(%s, %T) = %v, want %v", tc.topic, tc.event, got, tc.want)
		}
	}
}

func TestShimAddress(t *testing.T) {
	dir := t.TempDir()
	if a := ShimAddress(dir); a != "" {
		t.Errorf("empty bundle: %q", a)
	}
	os.WriteFile(filepath.Join(dir, "bootstrap.json"), []byte(`{"version":3,"address":"unix:///run/containerd/s/abc","protocol":"ttrpc"}`), 0o600)
	if a := ShimAddress(dir); a != "unix:///run/containerd/s/abc" {
		t.Errorf("bootstrap.json: %q", a)
	}
}
