// Package plugin registers the task service with the shim's plugin system,
// as containerd's shims do: as task API v3 (containerd 2.x) and, through
// shim/taskv2, as task API v2 (containerd 1.6 and 1.7).
package plugin

import (
	"context"
	"time"

	taskv2API "github.com/containerd/containerd/api/runtime/task/v2"
	taskAPI "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/containerd/v2/pkg/shim"
	"github.com/containerd/containerd/v2/pkg/shutdown"
	"github.com/containerd/containerd/v2/plugins"
	"github.com/containerd/plugin"
	"github.com/containerd/plugin/registry"
	"github.com/containerd/ttrpc"

	"github.com/qemu-shim/qemu-shim/internal/memtrim"
	"github.com/qemu-shim/qemu-shim/shim/task"
	"github.com/qemu-shim/qemu-shim/shim/taskv2"
)

func init() {
	registry.Register(&plugin.Registration{
		Type:     plugins.TTRPCPlugin,
		ID:       "task",
		Requires: []plugin.Type{plugins.EventPlugin, plugins.InternalPlugin},
		InitFn: func(ic *plugin.InitContext) (any, error) {
			pp, err := ic.GetByID(plugins.EventPlugin, "publisher")
			if err != nil {
				return nil, err
			}
			ss, err := ic.GetByID(plugins.InternalPlugin, "shutdown")
			if err != nil {
				return nil, err
			}
			s, err := task.New(ic.Context, pp.(shim.Publisher), ss.(shutdown.Service))
			if err != nil {
				return nil, err
			}
			return registrar{s: s, idle: memtrim.NewIdle(trimAfter)}, nil
		},
	})
}

// trimAfter is how long the shim waits after containerd's last call before
// it gives back the memory that starting containers took (see memtrim).
const trimAfter = 5 * time.Second

// registrar hands the service to the shim's TTRPC server, under both task
// APIs (containerd 2.x's runc shim serves v3 only), and trims the shim's
// memory once the calls stop.
type registrar struct {
	s    *task.Service
	idle *memtrim.Idle
}

// UnaryServerInterceptor notes each call, so that the trim waits for quiet.
func (r registrar) UnaryServerInterceptor() ttrpc.UnaryServerInterceptor {
	return func(ctx context.Context, unmarshal ttrpc.Unmarshaler, info *ttrpc.UnaryServerInfo, method ttrpc.Method) (any, error) {
		defer r.idle.Touch()
		return method(ctx, unmarshal)
	}
}

func (r registrar) RegisterTTRPC(server *ttrpc.Server) error {
	taskAPI.RegisterTTRPCTaskService(server, r.s)
	taskv2API.RegisterTTRPCTaskService(server, taskv2.New(r.s))
	return nil
}
