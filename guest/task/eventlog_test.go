package task

import (
	"testing"

	eventstypes "github.com/containerd/containerd/api/events"
)

func TestEventLogReplaysAfterSeq(t *testing.T) {
	l := NewEventLog(3)
	for _, id := range []string{"a", "b", "c", "d"} {
		l.Publish("/tasks/exit", &eventstypes.TaskExit{ContainerID: id})
	}
	all, _ := l.after(0)
	if len(all) != 3 || all[0].Seq != 2 {
		t.Fatalf("kept %d events starting at %d, want 3 starting at 2", len(all), all[0].Seq)
	}
	rest, changed := l.after(3)
	if len(rest) != 1 || rest[0].Seq != 4 {
		t.Fatalf("after 3: %v", rest)
	}
	l.Publish("/tasks/oom", &eventstypes.TaskOOM{ContainerID: "e"})
	select {
	case <-changed:
	default:
		t.Fatal("publish did not wake the waiter")
	}
}
