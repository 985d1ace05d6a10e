// Package serial carries many logical connections over one virtio-serial port.
//
// The port is a byte pipe with two quirks: bytes the host writes before the
// guest has opened the port are lost, and a guest read returns 0 while no host
// is connected. So each session starts with a handshake (the host pings until
// the guest says it is ready, then says start), and a yamux session runs on
// top. When the host goes away the guest drops the session and waits for the
// next handshake, so a host can reconnect.
package serial
