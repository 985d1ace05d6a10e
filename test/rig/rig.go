// Package rig drives containers in a booted guest through the agent's task
// API the way the shim does (disks, spec, streams, events), for the
// integration tests and the benchmarks.
package rig

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"sync"

	taskAPI "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/containerd/api/types"
	"github.com/containerd/containerd/v2/core/containers"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/pkg/oci"
	"github.com/containerd/typeurl/v2"
	"google.golang.org/protobuf/types/known/anypb"

	eventsapi "github.com/qemu-shim/qemu-shim/api/events/v1"
	"github.com/qemu-shim/qemu-shim/api/wire"
	"github.com/qemu-shim/qemu-shim/internal/busybox"
	"github.com/qemu-shim/qemu-shim/internal/syncutil"
	"github.com/qemu-shim/qemu-shim/internal/transport/conn"
	"github.com/qemu-shim/qemu-shim/vm"
)

// LayerSerial is the busybox layer's disk.
const LayerSerial = "bbx"

// BusyboxLayer builds the busybox erofs layer in dir and returns its path.
func BusyboxLayer(dir string) (string, error) {
	root := filepath.Join(dir, "busybox")
	if err := busybox.BusyboxRoot(root); err != nil {
		return "", err
	}
	layer := filepath.Join(dir, "busybox.erofs")
	return layer, busybox.Erofs(root, layer)
}

// Rig is a running VM with the busybox layer attached at boot (add
// vm.Disk{ID: LayerSerial, ...} to its config) and an event collector.
type Rig struct {
	Inst  *vm.Instance
	Dir   string
	Tasks taskAPI.TTRPCTaskService

	mu      sync.Mutex
	events  []*eventsapi.Envelope
	lastSeq uint64
	changed chan struct{}
	stop    context.CancelFunc
}

// New attaches to a running instance; dir is where upper disks go.
func New(inst *vm.Instance, dir string) (*Rig, error) {
	r := &Rig{Inst: inst, Dir: dir, changed: make(chan struct{})}
	return r, r.Connect()
}

// Connect (re)attaches the task client and the event stream, asking for
// every event after the last one seen.
func (r *Rig) Connect() error {
	client, err := r.Inst.TaskClient(context.Background())
	if err != nil {
		return err
	}
	r.Tasks = taskAPI.NewTTRPCTaskClient(client)
	ctx, cancel := context.WithCancel(context.Background())
	r.mu.Lock()
	after := r.lastSeq
	r.stop = cancel
	r.mu.Unlock()
	stream, err := eventsapi.NewEventsClient(client).Stream(ctx, &eventsapi.StreamRequest{After: after})
	if err != nil {
		cancel()
		return err
	}
	go func() {
		for {
			e, err := stream.Recv()
			if err != nil {
				return
			}
			r.mu.Lock()
			if e.Seq > r.lastSeq {
				r.events = append(r.events, e)
				r.lastSeq = e.Seq
				close(r.changed)
				r.changed = make(chan struct{})
			}
			r.mu.Unlock()
		}
	}()
	return nil
}

// Disconnect stops the event stream.
func (r *Rig) Disconnect() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.stop != nil {
		r.stop()
	}
}

// WaitEvent waits for an event of topic that match accepts (nil: any).
func (r *Rig) WaitEvent(ctx context.Context, topic string, match func(any) bool) (any, error) {
	seen := 0
	for {
		r.mu.Lock()
		evs := r.events[seen:]
		changed := r.changed
		r.mu.Unlock()
		for _, e := range evs {
			seen++
			if e.Topic != topic {
				continue
			}
			v, err := typeurl.UnmarshalAny(e.Event)
			if err != nil {
				return nil, err
			}
			if match == nil || match(v) {
				return v, nil
			}
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return nil, fmt.Errorf("no %s event: %w", topic, ctx.Err())
		}
	}
}

// Topics returns the topics of the events for container id, in order.
func (r *Rig) Topics(id string) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for _, e := range r.events {
		v, err := typeurl.UnmarshalAny(e.Event)
		if err != nil {
			continue
		}
		if c, ok := v.(interface{ GetContainerID() string }); ok && c.GetContainerID() == id {
			out = append(out, e.Topic)
		}
	}
	return out
}

// Proc is the host's end of a process's stdio.
type Proc struct {
	Stdin  net.Conn
	Out    *syncutil.Buffer
	OutEOF chan struct{}
	Fields [3]string // stdin, stdout, stderr as Create and Exec take them
}

// OpenStdio opens the streams for one process; stdout and stderr both
// collect into Out.
func (r *Rig) OpenStdio(ctx context.Context, name string, stdin, terminal bool) (*Proc, error) {
	p := &Proc{Out: &syncutil.Buffer{}, OutEOF: make(chan struct{})}
	var wg sync.WaitGroup
	outputs := []string{"stdout"}
	if !terminal {
		outputs = append(outputs, "stderr")
	}
	for i, kind := range outputs {
		c, err := r.Inst.DialStream(ctx, name+"-"+kind)
		if err != nil {
			return nil, err
		}
		p.Fields[i+1] = conn.StreamPrefix + name + "-" + kind
		wg.Add(1)
		go func() {
			defer wg.Done()
			io.Copy(p.Out, c)
			c.Close()
		}()
	}
	go func() { wg.Wait(); close(p.OutEOF) }()
	if stdin {
		c, err := r.Inst.DialStream(ctx, name+"-stdin")
		if err != nil {
			return nil, err
		}
		p.Stdin = c
		p.Fields[0] = conn.StreamPrefix + name + "-stdin"
	}
	return p, nil
}

// CreateOpts vary a container.
type CreateOpts struct {
	Stdin, Terminal bool
	Spec            []oci.SpecOpts
}

// Create makes a container from the busybox layer with its own writable
// disk.
func (r *Rig) Create(ctx context.Context, id string, args []string, o CreateOpts) (*Proc, error) {
	if err := r.AttachUpper(ctx, id); err != nil {
		return nil, err
	}
	return r.CreateAttached(ctx, id, args, o)
}

// AttachUpper makes and attaches the writable disk of container id.
func (r *Rig) AttachUpper(ctx context.Context, id string) error {
	upper := filepath.Join(r.Dir, id+".ext4")
	if err := busybox.EmptyExt4(upper, 32); err != nil {
		return err
	}
	return r.Inst.AttachDisk(ctx, vm.Disk{ID: "u-" + id, Path: upper})
}

// CreateAttached is Create once AttachUpper is done.
func (r *Rig) CreateAttached(ctx context.Context, id string, args []string, o CreateOpts) (*Proc, error) {
	serial := "u-" + id
	opts := append([]oci.SpecOpts{oci.WithDefaultPathEnv, oci.WithProcessArgs(args...)}, o.Spec...)
	if o.Terminal {
		opts = append(opts, oci.WithTTY)
	}
	spec, err := oci.GenerateSpec(namespaces.WithNamespace(ctx, "test"), nil, &containers.Container{ID: id}, opts...)
	if err != nil {
		return nil, err
	}
	config, err := json.Marshal(spec)
	if err != nil {
		return nil, err
	}
	p, err := r.OpenStdio(ctx, id, o.Stdin, o.Terminal)
	if err != nil {
		return nil, err
	}
	_, err = r.Tasks.Create(ctx, &taskAPI.CreateTaskRequest{
		ID: id, Bundle: "/host/bundles/" + id, Terminal: o.Terminal,
		Rootfs: []*types.Mount{
			{Type: "erofs", Source: wire.SerialPrefix + LayerSerial, Options: []string{"ro"}},
			{Type: "ext4", Source: wire.SerialPrefix + serial},
		},
		Stdin: p.Fields[0], Stdout: p.Fields[1], Stderr: p.Fields[2],
		Options: wire.SpecAny(config),
	})
	return p, err
}

// Start starts the init (execID "") or an exec.
func (r *Rig) Start(ctx context.Context, id, execID string) error {
	_, err := r.Tasks.Start(ctx, &taskAPI.StartRequest{ID: id, ExecID: execID})
	return err
}

// Wait returns a process's exit status.
func (r *Rig) Wait(ctx context.Context, id, execID string) (uint32, error) {
	resp, err := r.Tasks.Wait(ctx, &taskAPI.WaitRequest{ID: id, ExecID: execID})
	if err != nil {
		return 0, err
	}
	return resp.ExitStatus, nil
}

// Exec adds an exec process running args.
func (r *Rig) Exec(ctx context.Context, id, execID string, p *Proc, args ...string) error {
	spec, err := json.Marshal(map[string]any{"args": args, "cwd": "/", "env": []string{"PATH=/bin:/usr/bin:/sbin"}, "user": map[string]int{"uid": 0, "gid": 0}})
	if err != nil {
		return err
	}
	req := &taskAPI.ExecProcessRequest{ID: id, ExecID: execID, Spec: &anypb.Any{TypeUrl: "types.containerd.io/opencontainers/runtime-spec/1/Process", Value: spec}}
	if p != nil {
		req.Stdin, req.Stdout, req.Stderr = p.Fields[0], p.Fields[1], p.Fields[2]
	}
	_, err = r.Tasks.Exec(ctx, req)
	return err
}

// Remove deletes the container and detaches its writable disk.
func (r *Rig) Remove(ctx context.Context, id string) error {
	if _, err := r.Tasks.Delete(ctx, &taskAPI.DeleteRequest{ID: id}); err != nil {
		return err
	}
	return r.Inst.DetachDisk(ctx, "u-"+id)
}

// Run creates, starts, waits for and removes a container; it returns the
// exit status and the output.
func (r *Rig) Run(ctx context.Context, id string, args ...string) (uint32, string, error) {
	p, err := r.Create(ctx, id, args, CreateOpts{})
	if err != nil {
		return 0, "", err
	}
	if err := r.Start(ctx, id, ""); err != nil {
		return 0, "", err
	}
	status, err := r.Wait(ctx, id, "")
	if err != nil {
		return 0, "", err
	}
	<-p.OutEOF
	return status, p.Out.String(), r.Remove(ctx, id)
}
