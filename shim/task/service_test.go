package task

import (
	"errors"
	"strings"
	"testing"

	eventstypes "github.com/containerd/containerd/api/events"
	"github.com/containerd/errdefs"

	"github.com/qemu-shim/qemu-shim/shim/config"
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

// A pod's containers together stay within the configured maxima too: what
// grow would hot-plug for them, or the error naming the limit.
func TestTargetStaysWithinTheConfiguredMaxima(t *testing.T) {
	s := &Service{cfg: config.Default(), containers: map[string]*container{
		"pause": {id: "pause"},
		"app":   {id: "app", size: config.Size{CPUs: 2, MemoryMiB: 4096}},
	}}
	for _, tc := range []struct {
		name      string
		joining   config.Size
		cpus, mem int
		errHas    []string
	}{
		{"as they are", config.Size{}, 2, 256 + 4096, nil},
		{"one more within", config.Size{CPUs: 2, MemoryMiB: 3840}, 4, 8192, nil},
		{"one vCPU too many", config.Size{CPUs: 3}, 0, 0, []string{"together", "5 vCPUs", "vm.max_cpus 4"}},
		{"one MiB too many", config.Size{MemoryMiB: 3841}, 0, 0, []string{"together", "7937 MiB", "vm.max_memory_mib 8192"}},
	} {
		cpus, mem, err := s.target(tc.joining)
		if tc.errHas == nil {
			if err != nil || cpus != tc.cpus || mem != tc.mem {
				t.Errorf("%s: got %d vCPUs, %d MiB, %v; want %d, %d", tc.name, cpus, mem, err, tc.cpus, tc.mem)
			}
			continue
		}
		if !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("%s: got %v, want an invalid argument", tc.name, err)
			continue
		}
		for _, want := range tc.errHas {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("%s: %q does not name %s", tc.name, err, want)
			}
		}
	}
}
