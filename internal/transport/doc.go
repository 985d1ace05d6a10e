// Package transport names the ways the host reaches the guest agent and picks
// one. Whatever is underneath (vsock, or a virtio-serial port carrying a
// stream multiplexer), both sides only see net.Conn values: the host dials a
// new logical connection for TTRPC and for each stdio stream, the guest
// accepts them from a net.Listener.
package transport
