// Package guest holds the agent that runs as PID 1 inside every VM: it
// prepares the machine (boot), loads kernel modules (kmod), onlines
// hot-plugged CPUs and memory (hotplug) and serves the host's requests
// (agent).
package guest
