// Command portraw is the /init of the bench's raw virtio-serial
// measurement: it loads the port's drivers, opens the agent's port and,
// without any multiplexer, sinks, generates or echoes bytes as the host
// asks, so that the bench can tell the port's own rate from ours.
//
// Protocol (after the host sends one byte and the guest answers
// "RAWSTART"): the host sends an op byte and a little-endian uint64 size;
// 'S' sinks size bytes then answers 'k', 'G' writes size bytes, 'E' writes
// back what it reads until size bytes went by, 'Q' powers off.
package main

import (
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/qemu-shim/qemu-shim/guest/boot"
	"github.com/qemu-shim/qemu-shim/guest/kmod"
	"github.com/qemu-shim/qemu-shim/internal/transport/serial"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintf(os.Stderr, "portraw: %v\n", err)
	}
	syscall.Reboot(syscall.LINUX_REBOOT_CMD_POWER_OFF)
}

func run() error {
	if err := boot.MountPseudoFilesystems(); err != nil {
		return err
	}
	var uts unix.Utsname
	unix.Uname(&uts)
	loader, err := kmod.NewLoader(filepath.Join("/lib/modules", unix.ByteSliceToString(uts.Release[:])))
	if err != nil {
		return err
	}
	if _, err := loader.Load("virtio_pci", "virtio_console"); err != nil {
		return err
	}
	var path string
	for deadline := time.Now().Add(10 * time.Second); ; {
		if path, err = serial.FindPort("/sys", serial.PortName); err == nil {
			break
		}
		if time.Now().After(deadline) {
			return err
		}
		time.Sleep(2 * time.Millisecond)
	}
	port, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	// Announce until the host answers (bytes written while no host is
	// connected are lost, and reads then return 0).
	stop, stopped := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(stopped)
		for {
			port.Write([]byte("RAWREADY"))
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
		}
	}()
	b := make([]byte, 1)
	for {
		if n, _ := port.Read(b); n == 1 {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	close(stop)
	<-stopped
	port.Write([]byte("RAWSTART"))
	buf := make([]byte, 1<<20)
	for {
		var cmd [9]byte
		if _, err := io.ReadFull(port, cmd[:]); err != nil {
			return err
		}
		size := int64(binary.LittleEndian.Uint64(cmd[1:]))
		switch cmd[0] {
		case 'S':
			if _, err := io.CopyBuffer(io.Discard, io.LimitReader(port, size), buf); err != nil {
				return err
			}
			port.Write([]byte{'k'})
		case 'G':
			for size > 0 {
				n, err := port.Write(buf[:min(size, int64(len(buf)))])
				if err != nil {
					return err
				}
				size -= int64(n)
			}
		case 'E':
			for size > 0 {
				n, err := port.Read(buf[:min(size, int64(len(buf)))])
				if err != nil {
					return err
				}
				if _, err := port.Write(buf[:n]); err != nil {
					return err
				}
				size -= int64(n)
			}
		case 'Q':
			return nil
		}
	}
}
