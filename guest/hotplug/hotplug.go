package hotplug

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/containerd/log"
	"golang.org/x/sys/unix"
)

// Onliner brings hot-plugged CPUs and memory online.
type Onliner struct {
	// SysfsRoot is normally /sys.
	SysfsRoot string
}

// OnlineAll onlines every offline CPU and memory block and returns how many
// it changed.
func (o *Onliner) OnlineAll() (cpus, blocks int, err error) {
	cpuDirs, _ := filepath.Glob(filepath.Join(o.SysfsRoot, "devices/system/cpu/cpu[0-9]*"))
	for _, d := range cpuDirs {
		changed, e := o.onlineCPU(d)
		if e != nil && err == nil {
			err = e
		}
		if changed {
			cpus++
		}
	}
	memDirs, _ := filepath.Glob(filepath.Join(o.SysfsRoot, "devices/system/memory/memory[0-9]*"))
	for _, d := range memDirs {
		changed, e := o.onlineMemory(d)
		if e != nil && err == nil {
			err = e
		}
		if changed {
			blocks++
		}
	}
	return cpus, blocks, err
}

func (o *Onliner) onlineCPU(dir string) (bool, error) {
	state := filepath.Join(dir, "online")
	b, err := os.ReadFile(state)
	if err != nil || strings.TrimSpace(string(b)) != "0" {
		return false, nil // cpu0 has no online file; others may be online already
	}
	if err := os.WriteFile(state, []byte("1"), 0); err != nil {
		return false, fmt.Errorf("online %s: %w", filepath.Base(dir), err)
	}
	return true, nil
}

func (o *Onliner) onlineMemory(dir string) (bool, error) {
	state := filepath.Join(dir, "state")
	b, err := os.ReadFile(state)
	if err != nil || strings.TrimSpace(string(b)) != "offline" {
		return false, nil
	}
	// Movable, so that the host can unplug it again.
	if err := os.WriteFile(state, []byte("online_movable"), 0); err != nil {
		if err2 := os.WriteFile(state, []byte("online"), 0); err2 != nil {
			return false, fmt.Errorf("online %s: %w", filepath.Base(dir), err)
		}
	}
	return true, nil
}

// Watch onlines what the kernel announces as added until ctx ends.
func (o *Onliner) Watch(ctx context.Context) error {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_KOBJECT_UEVENT)
	if err != nil {
		return fmt.Errorf("open uevent socket: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK, Groups: 1}); err != nil {
		unix.Close(fd)
		return fmt.Errorf("bind uevent socket: %w", err)
	}
	f := os.NewFile(uintptr(fd), "uevent")
	context.AfterFunc(ctx, func() { f.Close() })
	// Anything that arrived before the socket existed.
	if _, _, err := o.OnlineAll(); err != nil {
		log.G(ctx).WithError(err).Warn("online hot-plugged resources")
	}
	buf := make([]byte, 8192)
	for {
		n, err := f.Read(buf)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("read uevent: %w", err)
		}
		action, devpath, subsystem := parseUevent(buf[:n])
		if action != "add" {
			continue
		}
		dir := filepath.Join(o.SysfsRoot, devpath)
		var changed bool
		switch subsystem {
		case "cpu":
			changed, err = o.onlineCPU(dir)
		case "memory":
			changed, err = o.onlineMemory(dir)
		default:
			continue
		}
		if err != nil {
			log.G(ctx).WithError(err).Warn("online hot-plugged resource")
		} else if changed {
			log.G(ctx).WithField("device", devpath).Debug("onlined")
		}
	}
}

// parseUevent reads a kernel uevent: "action@devpath\0KEY=VALUE\0...".
func parseUevent(b []byte) (action, devpath, subsystem string) {
	for i, field := range bytes.Split(b, []byte{0}) {
		s := string(field)
		if i == 0 {
			if !strings.Contains(s, "@") {
				return "", "", "" // not from the kernel
			}
			continue
		}
		k, v, _ := strings.Cut(s, "=")
		switch k {
		case "ACTION":
			action = v
		case "DEVPATH":
			if !strings.Contains(v, "..") {
				devpath = v
			}
		case "SUBSYSTEM":
			subsystem = v
		}
	}
	return action, devpath, subsystem
}

// SetCPUsOnline onlines or offlines hot-pluggable CPUs until n are online:
// the highest-numbered online ones go offline first, the lowest-numbered
// offline ones come online first. CPUs without an online file (the boot
// CPU) always count as online. It returns how many are online and present
// afterwards; an error says why n could not be reached.
func (o *Onliner) SetCPUsOnline(n int) (online, present int, err error) {
	dirs, _ := filepath.Glob(filepath.Join(o.SysfsRoot, "devices/system/cpu/cpu[0-9]*"))
	type cpu struct {
		num    int
		state  string // "" for a CPU without an online file
		online bool
	}
	var cpus []cpu
	for _, d := range dirs {
		num, e := strconv.Atoi(strings.TrimPrefix(filepath.Base(d), "cpu"))
		if e != nil {
			continue
		}
		c := cpu{num: num, online: true}
		if b, e := os.ReadFile(filepath.Join(d, "online")); e == nil {
			c.state = filepath.Join(d, "online")
			c.online = strings.TrimSpace(string(b)) == "1"
		}
		cpus = append(cpus, c)
		if c.online {
			online++
		}
	}
	present = len(cpus)
	slices.SortFunc(cpus, func(a, b cpu) int { return a.num - b.num })
	if n > present {
		return online, present, fmt.Errorf("%d CPUs online asked, the guest has %d", n, present)
	}
	for i := len(cpus) - 1; i >= 0 && online > n; i-- {
		if c := cpus[i]; c.online && c.state != "" {
			if e := os.WriteFile(c.state, []byte("0"), 0); e != nil {
				return online, present, fmt.Errorf("offline cpu%d: %w", c.num, e)
			}
			online--
		}
	}
	for i := 0; i < len(cpus) && online < n; i++ {
		if c := cpus[i]; !c.online {
			if e := os.WriteFile(c.state, []byte("1"), 0); e != nil {
				return online, present, fmt.Errorf("online cpu%d: %w", c.num, e)
			}
			online++
		}
	}
	if online != n {
		return online, present, fmt.Errorf("%d CPUs online asked, %d can be (the others cannot go offline)", n, online)
	}
	return online, present, nil
}
