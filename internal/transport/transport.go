package transport

import (
	"context"
	"fmt"
	"net"
	"os"
)

// Kind names a transport implementation.
type Kind string

const (
	// Auto picks VSock where the host has /dev/vhost-vsock, Serial elsewhere.
	Auto Kind = "auto"
	// VSock uses a vhost-vsock-pci device.
	VSock Kind = "vsock"
	// Serial uses one virtio-serial port with a stream multiplexer on top.
	Serial Kind = "serial"
)

// VhostVsockDevice is the host device that vsock to a guest needs.
const VhostVsockDevice = "/dev/vhost-vsock"

// Host is the host's end of a transport to one guest.
type Host interface {
	// Dial opens a new logical connection to the agent.
	Dial(ctx context.Context) (net.Conn, error)
	// Close ends every connection of this transport.
	Close() error
}

// ParseKind checks a configured transport name.
func ParseKind(s string) (Kind, error) {
	switch k := Kind(s); k {
	case "":
		return Auto, nil
	case Auto, VSock, Serial:
		return k, nil
	}
	return "", fmt.Errorf("unknown transport %q: want %q, %q or %q", s, Auto, VSock, Serial)
}

// Resolve turns Auto into the kind this host supports, and says why.
func Resolve(k Kind) (Kind, string) {
	if k != Auto {
		return k, "configured"
	}
	if f, err := os.OpenFile(VhostVsockDevice, os.O_RDWR, 0); err == nil {
		f.Close()
		return VSock, VhostVsockDevice + " is available"
	} else {
		return Serial, fmt.Sprintf("vsock unavailable (%v)", err)
	}
}
