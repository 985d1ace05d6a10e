// Package guest holds the agent that runs as PID 1 inside every VM: it
// prepares the machine (boot), loads kernel modules (kmod), onlines
// hot-plugged CPUs and memory (hotplug), serves the host's requests
// (agent), starts the task daemon and relays task traffic to it (relay) and
// reaps every child (reap). The task daemon's own packages are task and
// network.
package guest
