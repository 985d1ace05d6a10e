package task

import (
	"context"
	"fmt"
	"time"

	eventstypes "github.com/containerd/containerd/api/events"
	"github.com/containerd/containerd/v2/core/runtime"
	"github.com/containerd/log"
	"github.com/containerd/typeurl/v2"
	"google.golang.org/protobuf/types/known/timestamppb"

	eventsapi "github.com/qemu-shim/qemu-shim/api/events/v1"
	"github.com/qemu-shim/qemu-shim/shim/sandbox"
)

// relay publishes one container's events in the order the guest sent
// them. An exit waits for the process's output to drain, which holds up
// that container's later events only: each container has its own relay.
type relay struct {
	work    []func()
	running bool
}

// enqueue adds an event's publication to its container's relay.
func (s *Service) enqueue(containerID string, publish func()) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r := s.relays[containerID]
	if r == nil {
		r = &relay{}
		s.relays[containerID] = r
	}
	r.work = append(r.work, publish)
	if !r.running {
		r.running = true
		go s.runRelay(containerID, r)
	}
}

func (s *Service) runRelay(containerID string, r *relay) {
	for {
		s.mu.Lock()
		if len(r.work) == 0 {
			r.running = false
			if _, ok := s.containers[containerID]; !ok {
				delete(s.relays, containerID)
			}
			s.mu.Unlock()
			return
		}
		publish := r.work[0]
		r.work = r.work[1:]
		s.mu.Unlock()
		publish()
	}
}

// forwardEvents publishes the guest's events to containerd. The stream is
// resumed after the last event seen if it breaks.
func (s *Service) forwardEvents(sb sandbox.Sandbox) {
	ctx := s.ctx
	// The last event seen: the stream resumes after it. It is this VM's
	// (each VM numbers its events from 1).
	var after uint64
	for {
		sctx, cancel := context.WithCancel(ctx)
		stream, err := sb.Events(sctx, after)
		if err == nil {
			for {
				e, rerr := stream.Recv()
				if rerr != nil {
					err = rerr
					break
				}
				if e.Seq <= after {
					continue // seen before the stream broke
				}
				after = e.Seq
				s.receive(ctx, e)
			}
		}
		cancel()
		select {
		case <-sb.Done():
			return
		case <-time.After(100 * time.Millisecond):
		}
		log.G(ctx).WithError(err).Debug("agent event stream broke: resuming")
	}
}

// receive checks an event from the guest and queues it for its
// container. The guest is not trusted: only task events, under their own
// topics, about containers of this shim, go on to containerd, with the
// host's view of the container where the guest's differs.
func (s *Service) receive(ctx context.Context, e *eventsapi.Envelope) {
	v, err := typeurl.UnmarshalAny(e.Event)
	if err != nil {
		log.G(ctx).WithError(err).WithField("topic", e.Topic).Warn("undecodable event from the agent")
		return
	}
	if !taskEvent(e.Topic, v) {
		log.G(ctx).WithField("topic", e.Topic).WithField("type", fmt.Sprintf("%T", v)).Warn("unexpected event from the agent: dropped")
		return
	}
	id := v.(interface{ GetContainerID() string }).GetContainerID()
	s.mu.Lock()
	c, known := s.containers[id]
	s.mu.Unlock()
	if !known && e.Topic != runtime.TaskDeleteEventTopic {
		log.G(ctx).WithField("topic", e.Topic).WithField("container", id).Warn("event about an unknown container: dropped")
		return
	}
	if create, ok := v.(*eventstypes.TaskCreate); ok {
		// The guest knows its own bundle and streams; containerd is told
		// the host's, as the runc shim tells it.
		create.Bundle, create.Rootfs, create.Checkpoint = c.bundle, c.rootfs, ""
		create.IO = &eventstypes.TaskIO{Stdin: c.stdio.Stdin, Stdout: c.stdio.Stdout, Stderr: c.stdio.Stderr, Terminal: c.stdio.Terminal}
	}
	s.enqueue(id, func() {
		if exit, ok := v.(*eventstypes.TaskExit); ok && !s.recordExit(ctx, exit) {
			return // reported already, as killed with the VM
		}
		if err := s.publisher.Publish(ctx, e.Topic, v); err != nil {
			log.G(ctx).WithError(err).WithField("topic", e.Topic).Warn("publish event")
		}
	})
}

// recordExit waits for the process's output, then records its exit (for
// Wait and Delete). It says whether the exit is to be published: not when
// the process was reported killed with the VM already.
func (s *Service) recordExit(ctx context.Context, exit *eventstypes.TaskExit) bool {
	execID := exit.ID
	if execID == exit.ContainerID {
		execID = ""
	}
	_, p, err := s.lookup(exit.ContainerID, execID)
	if err != nil {
		return true
	}
	if !p.io.Wait(s.timeouts.drain) {
		log.G(ctx).WithField("container", exit.ContainerID).WithField("exec", execID).Warn("output not drained before exit")
	}
	return p.setExit(exit)
}

// taskEvent says whether v is the task event that topic names.
func taskEvent(topic string, v any) bool {
	var want string
	switch v.(type) {
	case *eventstypes.TaskCreate, *eventstypes.TaskStart, *eventstypes.TaskExit, *eventstypes.TaskDelete,
		*eventstypes.TaskExecAdded, *eventstypes.TaskExecStarted, *eventstypes.TaskPaused,
		*eventstypes.TaskResumed, *eventstypes.TaskOOM:
		want = runtime.GetTopic(v)
	default:
		return false
	}
	return topic == want
}

// watchSandbox reports every process that was running as killed if the
// VM ends under it: per container, its execs first and its init last, as
// the runc shim orders them. A process never started gets no exit event,
// as with the runc shim, but is over too. A container whose create
// returns after this (s.gone) is reported by create itself.
func (s *Service) watchSandbox(sb sandbox.Sandbox) {
	<-sb.Done()
	type orphan struct {
		c       *container
		execID  string
		p       *proc
		started bool
	}
	var orphans []orphan
	s.mu.Lock()
	reported := s.reportedFor(sb)
	s.gone[sb] = true
	for _, c := range s.containers {
		if !c.created {
			continue
		}
		for execID, p := range c.procs {
			if execID != "" {
				orphans = append(orphans, orphan{c, execID, p, p.isStarted()})
			}
		}
		if p := c.procs[""]; p != nil {
			orphans = append(orphans, orphan{c, "", p, true})
		}
	}
	s.mu.Unlock()
	if len(orphans) > 0 {
		log.G(s.ctx).WithField("status", sb.ExitStatus()).Error("the VM ended under its containers")
	}
	for _, o := range orphans {
		if o.started {
			s.reportKilled(o.c.id, o.execID, o.p, o.c.pid)
		} else {
			o.p.io.Close()
			o.p.setExit(&eventstypes.TaskExit{ContainerID: o.c.id, ID: o.execID})
		}
	}
	close(reported)
}

// reportKilled records a process as killed with the VM and publishes its
// exit, in order after its container's earlier events.
func (s *Service) reportKilled(containerID, execID string, p *proc, initPid uint32) {
	id := containerID
	ev := &eventstypes.TaskExit{ContainerID: containerID, ID: containerID, ExitStatus: 128 + 9, ExitedAt: timestamppb.Now()}
	if execID == "" {
		ev.Pid = initPid
	} else {
		ev.ID = execID
	}
	p.io.Close()
	if p.setExit(ev) {
		s.enqueue(id, func() {
			s.publisher.Publish(s.ctx, runtime.TaskExitEventTopic, ev)
		})
	}
}

// reportedFor is closed once the processes of sb have been reported
// after its end. Called with s.mu held.
func (s *Service) reportedFor(sb sandbox.Sandbox) chan struct{} {
	if s.reported == nil {
		s.reported = map[sandbox.Sandbox]chan struct{}{}
	}
	ch := s.reported[sb]
	if ch == nil {
		ch = make(chan struct{})
		s.reported[sb] = ch
	}
	return ch
}

// vmReported waits until the processes of sb have been reported after its
// end.
func (s *Service) vmReported(sb sandbox.Sandbox) <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.reportedFor(sb)
}
