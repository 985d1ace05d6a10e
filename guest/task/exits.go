package task

import (
	"context"
	"time"

	eventstypes "github.com/containerd/containerd/api/events"
	runc "github.com/containerd/go-runc"
	"github.com/containerd/log"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// preStart prepares for a process to be started (runc create, runc
// exec): every exit reaped from now on is kept for it, so that one that
// comes before its pid is known is not lost. handleStarted, called once
// the start's event is out, hands the process the exits of its pid (it
// exited already: its exit is reported now, after the start) or waits for
// them; cleanup drops the subscription of a start that failed. This is
// the runc shim's preStart.
func (s *Service) preStart() (handleStarted func(p *process, pid int), cleanup func()) {
	exits := map[int][]runc.Exit{}
	s.mu.Lock()
	s.exitSubscribers[&exits] = struct{}{}
	s.mu.Unlock()
	handleStarted = func(p *process, pid int) {
		s.mu.Lock()
		delete(s.exitSubscribers, &exits)
		p.mu.Lock()
		p.pid = pid
		p.mu.Unlock()
		ees, exited := exits[pid]
		if !exited {
			s.running[pid] = append(s.running[pid], p)
		}
		s.mu.Unlock()
		for _, e := range ees {
			go s.handleExit(p, e)
		}
	}
	cleanup = func() {
		s.mu.Lock()
		delete(s.exitSubscribers, &exits)
		s.mu.Unlock()
	}
	return handleStarted, cleanup
}

// exitLoop matches every reaped exit to the processes started with its
// pid, and hands it to every start under way. An exit nobody waits for
// (a process the guest reaped as subreaper) is dropped.
func (s *Service) exitLoop(ctx context.Context, exits chan runc.Exit) {
	for e := range exits {
		s.mu.Lock()
		for sub := range s.exitSubscribers {
			(*sub)[e.Pid] = append((*sub)[e.Pid], e)
		}
		ps := s.running[e.Pid]
		delete(s.running, e.Pid)
		s.mu.Unlock()
		for _, p := range ps {
			go s.handleExit(p, e)
		}
	}
}

// handleExit reports an exit once the process's output is drained. The
// init's exit is always the container's last: its execs are ended and
// reported first.
func (s *Service) handleExit(p *process, e runc.Exit) {
	ctx := context.Background()
	if p.execID == "" {
		for _, x := range p.c.runningExecs() {
			// Without their own pid namespace, execs outlive init: end them.
			unix.Kill(x.pid, unix.SIGKILL)
		}
		for _, x := range p.c.runningExecs() {
			select {
			case <-x.exited:
			case <-time.After(drainWait):
				log.G(ctx).WithField("exec", x.execID).Warn("exec did not exit after its container's init")
			}
		}
	}
	if p.io != nil && !p.io.wait(drainWait) {
		log.G(ctx).WithField("container", p.c.id).WithField("exec", p.execID).Warn("output not drained: something still holds the process's stdout")
	}
	if !p.setExited(e.Status, e.Timestamp) {
		return
	}
	s.publish(topicExit, &eventstypes.TaskExit{
		ContainerID: p.c.id, ID: p.id(), Pid: uint32(e.Pid), ExitStatus: uint32(e.Status), ExitedAt: timestamppb.New(e.Timestamp),
	})
}

// isInit says whether pid is the running init of one of the containers.
func (s *Service) isInit(pid int) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, p := range s.running[pid] {
		if p.execID == "" {
			return true
		}
	}
	return false
}
