package task

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"time"

	eventstypes "github.com/containerd/containerd/api/events"
	taskAPI "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/errdefs"
	runc "github.com/containerd/go-runc"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/qemu-shim/qemu-shim/api/wire"
)

// Exec registers an exec process; Start runs it.
func (s *Service) Exec(ctx context.Context, r *taskAPI.ExecProcessRequest) (*emptypb.Empty, error) {
	c, err := s.container(r.ID)
	if err != nil {
		return nil, err
	}
	if !validID.MatchString(r.ExecID) {
		return nil, fmt.Errorf("exec id %q: %w", r.ExecID, errdefs.ErrInvalidArgument)
	}
	if st := c.init.getState(); st != procRunning {
		return nil, fmt.Errorf("cannot exec in a %s state: %w", st, errdefs.ErrFailedPrecondition)
	}
	if r.Spec == nil || len(r.Spec.Value) > wire.MaxSpecSize {
		return nil, fmt.Errorf("exec %s: missing or oversized process spec: %w", r.ExecID, errdefs.ErrInvalidArgument)
	}
	var spec specs.Process
	if err := json.Unmarshal(r.Spec.Value, &spec); err != nil {
		return nil, fmt.Errorf("exec %s: process spec: %v: %w", r.ExecID, err, errdefs.ErrInvalidArgument)
	}
	if len(spec.Args) == 0 {
		return nil, fmt.Errorf("exec %s: no args: %w", r.ExecID, errdefs.ErrInvalidArgument)
	}
	spec.Terminal = r.Terminal
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.execs[r.ExecID]; ok {
		return nil, fmt.Errorf("id %s: %w", r.ExecID, errdefs.ErrAlreadyExists)
	}
	p := newProcess(c, r.ExecID, stdio{stdin: r.Stdin, stdout: r.Stdout, stderr: r.Stderr, terminal: r.Terminal})
	p.spec = &spec
	c.execs[r.ExecID] = p
	s.publish(topicExecAdded, &eventstypes.TaskExecAdded{ContainerID: r.ID, ExecID: r.ExecID})
	return &emptypb.Empty{}, nil
}

func (s *Service) startExec(ctx context.Context, c *container, p *process) (int, error) {
	pio, err := newProcIO(ctx, s.cfg.Streams, p.names, int(p.spec.User.UID), int(p.spec.User.GID))
	if err != nil {
		return 0, err
	}
	pidFile := filepath.Join(c.bundle, "exec-"+p.execID+".pid")
	defer os.Remove(pidFile)
	opts := &runc.ExecOpts{IO: pio.runcIO(), ConsoleSocket: pio.consoleSocket(), PidFile: pidFile, Detach: true}
	began := time.Now()
	if err := s.runcFor(c).Exec(ctx, c.id, *p.spec, opts); err != nil {
		pio.close()
		return 0, runcError(c, "exec", err)
	}
	debugTook(ctx, "runtime exec", began)
	pid, err := runc.ReadPidFile(pidFile)
	if err != nil {
		pio.close()
		return 0, err
	}
	if err := pio.start(ctx); err != nil {
		// Killed, and its exit left for the reaper: no start is reported.
		unix.Kill(pid, unix.SIGKILL)
		pio.close()
		return 0, err
	}
	p.io = pio
	p.mu.Lock()
	p.state = procRunning
	p.pid = pid
	p.mu.Unlock()
	return pid, nil
}
