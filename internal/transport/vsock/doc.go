// Package vsock is the transport over AF_VSOCK: the host dials the guest's
// context ID (CID) through a vhost-vsock-pci device, the guest listens on a
// port. It also hands out CIDs so that concurrent shims on one host never
// share one, and a CID just released is not reused at once.
package vsock
