package task

import (
	"testing"

	eventstypes "github.com/containerd/containerd/api/events"
	"github.com/containerd/containerd/v2/core/runtime"
)

// The guest's topics are containerd's: the host checks each event against
// runtime.GetTopic, and drops the ones that differ. (The guest keeps its
// own constants so as not to link containerd's runtime package.)
func TestTopicsAreContainerds(t *testing.T) {
	for topic, event := range map[string]any{
		topicCreate: &eventstypes.TaskCreate{}, topicStart: &eventstypes.TaskStart{},
		topicExit: &eventstypes.TaskExit{}, topicDelete: &eventstypes.TaskDelete{},
		topicExecAdded: &eventstypes.TaskExecAdded{}, topicExecStarted: &eventstypes.TaskExecStarted{},
		topicPaused: &eventstypes.TaskPaused{}, topicResumed: &eventstypes.TaskResumed{},
		topicOOM: &eventstypes.TaskOOM{},
	} {
		if want := runtime.GetTopic(event); topic != want {
			t.Errorf("%T: topic %q, containerd's is %q", event, topic, want)
		}
	}
}
