// Package stdio is the host side of a process's stdio, as containerd's runc
// shim does it: containerd's fifos (containerd/fifo), or a binary:// or
// file:// log URI, joined to the process's streams in the guest. Output is
// drained before the process's exit is reported.
package stdio
