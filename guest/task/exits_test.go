package task

import (
	"context"
	"testing"
	"time"

	eventstypes "github.com/containerd/containerd/api/events"
	runc "github.com/containerd/go-runc"
	"github.com/containerd/typeurl/v2"
)

func newExitService(t *testing.T) (*Service, chan runc.Exit) {
	t.Helper()
	s := &Service{cfg: Config{Events: NewEventLog(64)}, containers: map[string]*container{},
		running: map[int][]*process{}, exitSubscribers: map[*map[int][]runc.Exit]struct{}{}}
	exits := make(chan runc.Exit)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	go s.exitLoop(ctx, exits)
	t.Cleanup(func() { close(exits) })
	return s, exits
}

// execExits lists the exec exits published, in order.
func execExits(t *testing.T, s *Service) []string {
	t.Helper()
	envs, _ := s.cfg.Events.after(0)
	var ids []string
	for _, e := range envs {
		v, err := typeurl.UnmarshalAny(e.Event)
		if err != nil {
			t.Fatal(err)
		}
		if x, ok := v.(*eventstypes.TaskExit); ok {
			ids = append(ids, x.ID)
		}
	}
	return ids
}

// waitExitPublished waits until the exit of p is in the event log.
func waitExitPublished(t *testing.T, s *Service, p *process) {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		_, more := s.cfg.Events.after(0)
		for _, id := range execExits(t, s) {
			if id == p.execID {
				return
			}
		}
		select {
		case <-more:
		case <-deadline:
			t.Fatalf("exec %s: exit never published", p.execID)
		}
	}
}

// An exit reaped while the process is being started (its pid not yet
// known) is not lost: it is handled once the start is out.
func TestExitDuringStartIsKept(t *testing.T) {
	s, exits := newExitService(t)
	c := &container{id: "c", execs: map[string]*process{}}
	p := newProcess(c, "fast", stdio{})
	handleStarted, _ := s.preStart()
	exits <- runc.Exit{Pid: 4242, Status: 3, Timestamp: time.Now()}
	if got := execExits(t, s); len(got) != 0 {
		t.Fatalf("exit published before the start: %v", got)
	}
	handleStarted(p, 4242)
	waitExitPublished(t, s, p)
	if got := execExits(t, s); len(got) != 1 || got[0] != "fast" {
		t.Errorf("exits %v, want fast's", got)
	}
}

// An exit nobody waits for is not kept for a later process that gets the
// same pid: only starts under way when it is reaped see it.
func TestStrayExitIsNotMatchedLater(t *testing.T) {
	s, exits := newExitService(t)
	exits <- runc.Exit{Pid: 4243, Status: 1, Timestamp: time.Now()} // an orphan the guest reaped
	c := &container{id: "c", execs: map[string]*process{}}
	p := newProcess(c, "reused", stdio{})
	handleStarted, _ := s.preStart()
	handleStarted(p, 4243)
	select {
	case <-p.exited:
		t.Fatalf("a stray exit before the start was taken as the new process's")
	default:
	}
	exits <- runc.Exit{Pid: 4243, Status: 0, Timestamp: time.Now()}
	waitExitPublished(t, s, p)
	if got := execExits(t, s); len(got) != 1 {
		t.Errorf("exits %v, want one", got)
	}
}

// A start that fails drops its subscription.
func TestFailedStartUnsubscribes(t *testing.T) {
	s, _ := newExitService(t)
	_, cleanup := s.preStart()
	cleanup()
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.exitSubscribers) != 0 {
		t.Errorf("%d subscriptions left", len(s.exitSubscribers))
	}
}
