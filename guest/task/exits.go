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

// register makes a pid known while its start event is not yet out.
func (s *Service) register(p *process, pid int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	p.mu.Lock()
	p.pid = pid
	p.starting = true
	if e, ok := s.early[pid]; ok {
		p.pendingExit = &e
		delete(s.early, pid)
	}
	p.mu.Unlock()
	s.byPid[pid] = p
}

// released lets exits of p through, handling one that came meanwhile.
func (s *Service) released(p *process) {
	p.mu.Lock()
	p.starting = false
	e := p.pendingExit
	p.pendingExit = nil
	p.mu.Unlock()
	if e != nil {
		go s.handleExit(p, *e)
	}
}

// exitLoop matches every reaped exit to its process.
func (s *Service) exitLoop(ctx context.Context, exits chan runc.Exit) {
	for e := range exits {
		s.mu.Lock()
		p, ok := s.byPid[e.Pid]
		if !ok {
			// Perhaps runc has not told us the pid yet; keep it a while.
			s.early[e.Pid] = e
			for pid, old := range s.early {
				if time.Since(old.Timestamp) > time.Minute {
					delete(s.early, pid)
				}
			}
			s.mu.Unlock()
			continue
		}
		delete(s.byPid, e.Pid)
		p.mu.Lock()
		held := p.starting
		if held {
			e := e
			p.pendingExit = &e
		}
		p.mu.Unlock()
		s.mu.Unlock()
		if !held {
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

// isInit says whether pid is the init of one of the containers.
func (s *Service) isInit(pid int) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	p, ok := s.byPid[pid]
	return ok && p.execID == ""
}
