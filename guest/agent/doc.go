// Package agent implements the VM-level TTRPC service of the guest agent
// (task/agent/v1): facts about the guest, block devices found by serial, and
// power-off.
package agent
