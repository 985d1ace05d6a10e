package vm

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"

	"github.com/qemu-shim/qemu-shim/vm/cmdline"
)

// AttachDisk hot-plugs a disk image as a SCSI disk (the lowest free LUN,
// from 1, of target 0 of the VM's virtio-scsi controller); the guest finds
// it by d.ID as serial (VPD page 0x80). All on one target, a disk never
// needs the guest to scan the bus: the guest adds a LUN other than 0 as
// the controller reports it, and never scans the 256 targets at boot (the
// guest's scsi_mod loads with scan=manual: that scan cost a quarter of a
// second under TCG).
func (i *Instance) AttachDisk(ctx context.Context, d Disk) error {
	if err := i.state.require(i.cfg.ID, "attach a disk", StateRunning); err != nil {
		return err
	}
	if err := i.cfg.checkDisk(&d); err != nil {
		return fmt.Errorf("vm %s: %w", i.cfg.ID, err)
	}
	i.hp.mu.Lock()
	defer i.hp.mu.Unlock()
	if _, ok := i.hp.disks[d.ID]; ok || slices.Contains(i.hp.ports, d.ID) {
		return fmt.Errorf("vm %s: device %s: %w", i.cfg.ID, d.ID, errdefs.ErrAlreadyExists)
	}
	slot := slices.Index(i.hp.luns, "")
	if slot < 0 {
		return fmt.Errorf("vm %s: all %d disk LUNs of the SCSI controller are in use: %w", i.cfg.ID, len(i.hp.luns), errdefs.ErrResourceExhausted)
	}
	format := d.Format
	if format == "" {
		format = "raw"
	}
	fileNode, drvNode := "file-"+d.ID, "drv-"+d.ID
	// The shim opens the image and hands QEMU the descriptor: QEMU, in its
	// empty root as its own user, could not open it by path.
	fdset, protocol, err := i.addDiskFD(ctx, d)
	if err != nil {
		return fmt.Errorf("vm %s: %w", i.cfg.ID, err)
	}
	if err := i.qmp.Run(ctx, "blockdev-add", blockdevAdd{Driver: protocol, NodeName: fileNode, Filename: fdsetPath(fdset), ReadOnly: d.ReadOnly}, nil); err != nil {
		i.removeFDSet(ctx, fdset)
		return fmt.Errorf("vm %s: open disk %s: %w", i.cfg.ID, d.Path, err)
	}
	undo := func(nodes ...string) {
		for _, n := range nodes {
			if err := i.qmp.Run(context.WithoutCancel(ctx), "blockdev-del", blockdevDel{NodeName: n}, nil); err != nil {
				log.G(ctx).WithError(err).WithField("node", n).Warn("remove block node after failed attach")
			}
		}
		i.removeFDSet(context.WithoutCancel(ctx), fdset)
	}
	if err := i.qmp.Run(ctx, "blockdev-add", blockdevAdd{Driver: format, NodeName: drvNode, File: fileNode, ReadOnly: d.ReadOnly}, nil); err != nil {
		undo(fileNode)
		return fmt.Errorf("vm %s: disk %s as %s: %w", i.cfg.ID, d.Path, format, err)
	}
	if err := i.qmp.Run(ctx, "device_add", scsiDiskAdd{
		Driver: "scsi-hd", ID: d.ID, Drive: drvNode, Serial: d.ID,
		Bus: cmdline.ScsiControllerID + ".0", Channel: 0, SCSIID: 0, LUN: slot + 1,
	}, nil); err != nil {
		undo(drvNode, fileNode)
		return fmt.Errorf("vm %s: plug disk %s: %w", i.cfg.ID, d.ID, err)
	}
	i.hp.luns[slot] = d.ID
	i.hp.disks[d.ID] = slot
	i.hp.fdsets[d.ID] = fdset
	return nil
}

// addDiskFD opens a disk image for QEMU, read-only if the disk is, and
// adds the descriptor to a new file descriptor set, whose ID it returns
// with the QEMU block driver for the image (files and block devices
// differ).
func (i *Instance) addDiskFD(ctx context.Context, d Disk) (int, string, error) {
	flags := os.O_RDWR
	if d.ReadOnly {
		flags = os.O_RDONLY
	}
	f, err := os.OpenFile(d.Path, flags, 0)
	if err != nil {
		if os.IsNotExist(err) {
			err = fmt.Errorf("%w: %w", err, errdefs.ErrNotFound)
		}
		return 0, "", fmt.Errorf("open disk: %w", err)
	}
	defer f.Close() // QEMU has its own copy once add-fd returns
	st, err := f.Stat()
	if err != nil {
		return 0, "", fmt.Errorf("disk %s: %w", d.Path, err)
	}
	protocol := "file" // QEMU's file driver refuses block devices
	switch {
	case st.Mode().IsRegular():
	case st.Mode()&os.ModeDevice != 0 && st.Mode()&os.ModeCharDevice == 0:
		protocol = "host_device"
	default:
		return 0, "", fmt.Errorf("disk %s is neither a file nor a block device: %w", d.Path, errdefs.ErrInvalidArgument)
	}
	var added addFDResult
	if err := i.qmp.RunWithFile(ctx, "add-fd", addFD{Opaque: "disk " + d.ID + ": " + d.Path}, &added, f); err != nil {
		return 0, "", fmt.Errorf("hand disk %s to QEMU: %w", d.Path, err)
	}
	return added.FDSetID, protocol, nil
}

// removeFDSet drops a disk's descriptor set; QEMU closes the descriptors
// once no block node uses them.
func (i *Instance) removeFDSet(ctx context.Context, fdset int) {
	if err := i.qmp.Run(ctx, "remove-fd", removeFD{FDSetID: fdset}, nil); err != nil {
		log.G(ctx).WithError(err).WithField("vm", i.cfg.ID).WithField("fdset", fdset).Warn("remove a disk's descriptor set")
	}
}

// fdsetPath is how QEMU opens a descriptor of a set.
func fdsetPath(fdset int) string { return "/dev/fdset/" + strconv.Itoa(fdset) }

// DetachDisk unplugs a disk, waits for the guest to release it and closes
// the image in QEMU.
func (i *Instance) DetachDisk(ctx context.Context, id string) error {
	if err := i.state.require(i.cfg.ID, "detach a disk", StateRunning); err != nil {
		return err
	}
	i.hp.mu.Lock()
	defer i.hp.mu.Unlock()
	slot, ok := i.hp.disks[id]
	if !ok {
		return fmt.Errorf("vm %s: disk %s: %w", i.cfg.ID, id, errdefs.ErrNotFound)
	}
	if err := i.unplug(ctx, id); err != nil {
		return err
	}
	delete(i.hp.disks, id)
	if slot >= 0 {
		i.hp.luns[slot] = ""
	}
	var errs []error
	for _, n := range []string{"drv-" + id, "file-" + id} {
		if err := i.qmp.Run(ctx, "blockdev-del", blockdevDel{NodeName: n}, nil); err != nil {
			errs = append(errs, err)
		}
	}
	if fdset, ok := i.hp.fdsets[id]; ok {
		delete(i.hp.fdsets, id)
		if err := i.qmp.Run(ctx, "remove-fd", removeFD{FDSetID: fdset}, nil); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("vm %s: close disk %s: %w", i.cfg.ID, id, err)
	}
	return nil
}
