package vm

import (
	"bytes"
	"encoding/json"
)

// The arguments of the QMP commands the hot-plug code sends, one type per
// command shape, named as QEMU's schema names their members.

// deviceDel is device_del's.
type deviceDel struct {
	ID string `json:"id"`
}

// hotpluggableCPU is an entry of query-hotpluggable-cpus.
type hotpluggableCPU struct {
	Type       string   `json:"type"`
	VCPUsCount int      `json:"vcpus-count"`
	QOMPath    string   `json:"qom-path"`
	Props      cpuProps `json:"props"`
}

// cpuProps is where a vCPU goes in the topology: what device_add of a CPU
// must repeat. A member QEMU reports that is not known here is an error,
// not something silently left out of device_add.
type cpuProps struct {
	NodeID    *int `json:"node-id,omitempty"`
	SocketID  *int `json:"socket-id,omitempty"`
	DieID     *int `json:"die-id,omitempty"`
	ClusterID *int `json:"cluster-id,omitempty"`
	CoreID    *int `json:"core-id,omitempty"`
	ThreadID  *int `json:"thread-id,omitempty"`
}

func (p *cpuProps) UnmarshalJSON(b []byte) error {
	type plain cpuProps
	d := json.NewDecoder(bytes.NewReader(b))
	d.DisallowUnknownFields()
	return d.Decode((*plain)(p))
}

// cpuDeviceAdd is device_add of a vCPU.
type cpuDeviceAdd struct {
	Driver    string `json:"driver"`
	ID        string `json:"id"`
	NodeID    *int   `json:"node-id,omitempty"`
	SocketID  *int   `json:"socket-id,omitempty"`
	DieID     *int   `json:"die-id,omitempty"`
	ClusterID *int   `json:"cluster-id,omitempty"`
	CoreID    *int   `json:"core-id,omitempty"`
	ThreadID  *int   `json:"thread-id,omitempty"`
}

func (p cpuProps) deviceAdd(driver, id string) cpuDeviceAdd {
	return cpuDeviceAdd{Driver: driver, ID: id, NodeID: p.NodeID, SocketID: p.SocketID, DieID: p.DieID,
		ClusterID: p.ClusterID, CoreID: p.CoreID, ThreadID: p.ThreadID}
}

// memoryBackendAdd is object-add of a memory backend.
type memoryBackendAdd struct {
	QOMType string `json:"qom-type"`
	ID      string `json:"id"`
	Size    uint64 `json:"size"`
	Share   bool   `json:"share,omitempty"`
}

// objectDel is object-del's.
type objectDel struct {
	ID string `json:"id"`
}

// dimmDeviceAdd is device_add of a pc-dimm.
type dimmDeviceAdd struct {
	Driver string `json:"driver"`
	ID     string `json:"id"`
	Memdev string `json:"memdev"`
}

// qomSetSize is qom-set of a size property.
type qomSetSize struct {
	Path     string `json:"path"`
	Property string `json:"property"`
	Value    uint64 `json:"value"`
}

// qomGet is qom-get's.
type qomGet struct {
	Path     string `json:"path"`
	Property string `json:"property"`
}

// blockdevAdd is blockdev-add of a file node (Filename) or of a format
// node over one (File).
type blockdevAdd struct {
	Driver   string `json:"driver"`
	NodeName string `json:"node-name"`
	Filename string `json:"filename,omitempty"`
	File     string `json:"file,omitempty"`
	ReadOnly bool   `json:"read-only"`
}

// blockdevDel is blockdev-del's.
type blockdevDel struct {
	NodeName string `json:"node-name"`
}

// scsiDiskAdd is device_add of a scsi-hd.
type scsiDiskAdd struct {
	Driver  string `json:"driver"`
	ID      string `json:"id"`
	Drive   string `json:"drive"`
	Serial  string `json:"serial"`
	Bus     string `json:"bus"`
	Channel int    `json:"channel"`
	SCSIID  int    `json:"scsi-id"`
	LUN     int    `json:"lun"`
}

// addFD is add-fd's: the descriptor passed along goes into a new set.
type addFD struct {
	Opaque string `json:"opaque,omitempty"`
}

// addFDResult is what add-fd returns.
type addFDResult struct {
	FDSetID int `json:"fdset-id"`
	FD      int `json:"fd"`
}

// removeFD is remove-fd of a whole set.
type removeFD struct {
	FDSetID int `json:"fdset-id"`
}

// fdName is getfd's and closefd's.
type fdName struct {
	FDName string `json:"fdname"`
}

// tapNetdevAdd is netdev_add of a tap backend on a descriptor from getfd.
type tapNetdevAdd struct {
	Type string `json:"type"`
	ID   string `json:"id"`
	FD   string `json:"fd"`
}

// netdevDel is netdev_del's.
type netdevDel struct {
	ID string `json:"id"`
}

// nicDeviceAdd is device_add of a virtio-net card.
type nicDeviceAdd struct {
	Driver string `json:"driver"`
	ID     string `json:"id"`
	Netdev string `json:"netdev"`
	Bus    string `json:"bus"`
	MAC    string `json:"mac,omitempty"`
	// RomFile is always empty: the guest boots without network boot
	// ROMs, and QEMU, chrooted, could not load one.
	RomFile string `json:"romfile"`
}

// migrate starts saving the VM's state to uri.
type migrate struct {
	URI string `json:"uri"`
}

// migrationInfo is what query-migrate reports.
type migrationInfo struct {
	Status    string `json:"status"`
	ErrorDesc string `json:"error-desc"`
	RAM       struct {
		Transferred uint64 `json:"transferred"`
	} `json:"ram"`
}

// chardevAdd adds a character device backend.
type chardevAdd struct {
	ID      string         `json:"id"`
	Backend chardevBackend `json:"backend"`
}

type chardevBackend struct {
	Type string `json:"type"`
	Data any    `json:"data"`
}

type chardevSocket struct {
	Addr   chardevBackend `json:"addr"`
	Server bool           `json:"server"`
}

// fdChardevAdd makes a character device of a connected socket passed to
// QEMU with getfd as fdName (QEMU takes the descriptor over).
func fdChardevAdd(id, fdName string) chardevAdd {
	return chardevAdd{ID: id, Backend: chardevBackend{Type: "socket", Data: chardevSocket{
		Addr: chardevBackend{Type: "fd", Data: fdSocketAddress{Str: fdName}},
	}}}
}

// fdSocketAddress names a descriptor passed with getfd.
type fdSocketAddress struct {
	Str string `json:"str"`
}

// shareDeviceAdd plugs a vhost-user-fs device.
type shareDeviceAdd struct {
	Driver  string `json:"driver"`
	ID      string `json:"id"`
	Chardev string `json:"chardev"`
	Tag     string `json:"tag"`
	Bus     string `json:"bus"`
}

// migrateSetCapabilities turns migration capabilities on or off.
type migrateSetCapabilities struct {
	Capabilities []migrationCapability `json:"capabilities"`
}

type migrationCapability struct {
	Capability string `json:"capability"`
	State      bool   `json:"state"`
}
