package vm

import (
	"context"
	"fmt"
	"path/filepath"
	"time"

	"github.com/qemu-shim/qemu-shim/internal/transport"
	"github.com/qemu-shim/qemu-shim/internal/transport/serial"
	"github.com/qemu-shim/qemu-shim/internal/transport/vsock"
	"github.com/qemu-shim/qemu-shim/vm/cmdline"
)

// agentLink is the transport to the agent, chosen once per VM: what it adds
// to QEMU's command line, how the host connects, and what it holds.
type agentLink interface {
	kind() transport.Kind
	// configure adds the transport's device to m.
	configure(m *cmdline.Machine)
	// connect reaches the agent once QEMU runs.
	connect(ctx context.Context) (transport.Host, error)
	// park leaves the guest waiting for its next host once every
	// connection of this one is closed (see SaveState).
	park(ctx context.Context) error
	// release gives back what the link holds (a vsock CID).
	release()
}

// newAgentLink makes the link for kind; for vsock that leases a CID.
func (i *Instance) newAgentLink(kind transport.Kind) (agentLink, error) {
	switch kind {
	case transport.VSock:
		alloc := &vsock.CIDAllocator{Dir: filepath.Join(i.cfg.StateRoot, CIDLeaseDirName), Cooldown: 30 * time.Second}
		lease, err := alloc.Allocate()
		if err != nil {
			return nil, fmt.Errorf("vm %s: %w", i.cfg.ID, err)
		}
		return &vsockLink{lease: lease}, nil
	case transport.Serial:
		return &serialLink{socket: filepath.Join(i.stateDir, agentSocketName)}, nil
	}
	return nil, fmt.Errorf("vm %s: transport %q has no link", i.cfg.ID, kind)
}

// serialLink is a virtio-serial port on a Unix socket QEMU listens on, with
// a stream multiplexer on top.
type serialLink struct{ socket string }

func (l *serialLink) kind() transport.Kind { return transport.Serial }

func (l *serialLink) configure(m *cmdline.Machine) {
	m.AgentSocket, m.AgentPortName = l.socket, serial.PortName
}

func (l *serialLink) connect(ctx context.Context) (transport.Host, error) {
	return serial.Connect(ctx, l.socket)
}

// park greets the guest once more without starting a session, so that it
// is left answering pings, as at boot.
func (l *serialLink) park(ctx context.Context) error { return serial.Park(ctx, l.socket) }

func (l *serialLink) release() {}

// vsockLink is vhost-vsock with a leased CID.
type vsockLink struct{ lease *vsock.Lease }

func (l *vsockLink) kind() transport.Kind { return transport.VSock }

func (l *vsockLink) configure(m *cmdline.Machine) { m.VsockCID = l.lease.CID }

func (l *vsockLink) connect(context.Context) (transport.Host, error) {
	return &vsock.Host{CID: l.lease.CID, Port: vsock.AgentPort}, nil
}

// park has nothing to do: each vsock connection is the guest's own, and a
// restored guest's are reset by the device.
func (l *vsockLink) park(context.Context) error { return nil }

func (l *vsockLink) release() { l.lease.Release() }
