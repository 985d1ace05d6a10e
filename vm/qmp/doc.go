// Package qmp talks to one QEMU over its QMP socket: the greeting and
// capabilities handshake, typed commands each bounded by a timeout, and an
// event loop that the rest of the driver waits on. It keeps JSON out of the
// rest of vm/.
package qmp
