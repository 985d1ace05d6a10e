// Package bundle names the files the shim keeps in a container's bundle
// beside containerd's (the VM's state directory, the hooks' network
// namespace and pending poststop), reads containerd's own (config.json,
// the shim's address), and names a VM after its first container.
package bundle

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"

	"github.com/containerd/containerd/v2/pkg/shim"
	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// VMDirFile, in a bundle, holds the full path of the state directory of the
// VM the container runs in, for the manager's cleanup after a crash: the
// manager then needs neither the configuration (its state root) nor the
// VM's name.
const VMDirFile = "qemu-shim-vm"

// vmNameHash is how many hex digits of the hash end a VM's name, and
// vmNameMax its length at most: short enough that the state directory's
// sockets fit the 108 bytes of a Unix socket path under a state root of
// up to about 48 characters, whatever the container's ID.
const (
	vmNameHash = 16
	vmNameMax  = 40
)

// vmName matches what VMName makes.
var vmName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,22}-[0-9a-f]{16}$`)

// VMName names the VM, and so its state directory under the state root, of
// the shim whose first container is id in namespace. Container IDs are
// unique only within a namespace, so the name is unique per namespace and
// id: a hash of both ends it, after as much of "namespace_id" as fits in
// vmNameMax characters (for people, like `qemu-shim list`). It is a path component of letters, digits, '_', '.' and '-' that
// never equals another entry of the state root (vm.CIDLeaseDirName).
func VMName(namespace, id string) string {
	sum := sha256.Sum256([]byte(strconv.Itoa(len(namespace)) + ":" + namespace + id))
	readable := []byte(namespace + "_" + id)
	if len(readable) > vmNameMax-1-vmNameHash {
		readable = readable[:vmNameMax-1-vmNameHash]
	}
	for i, b := range readable {
		switch {
		case 'a' <= b && b <= 'z', 'A' <= b && b <= 'Z', '0' <= b && b <= '9':
		case i == 0:
			readable[i] = 'x' // a name starts with a letter or a digit
		case b != '_' && b != '.' && b != '-':
			readable[i] = '_'
		}
	}
	return string(readable) + "-" + hex.EncodeToString(sum[:])[:vmNameHash]
}

// ReadVMDir returns the VM state directory recorded in a bundle (an error
// wrapping os.ErrNotExist if there is none). The path must be absolute and
// clean and end in a name VMName makes: the manager kills the QEMU of that
// directory and removes it, so a bundle file that says anything else is
// refused.
func ReadVMDir(bundle string) (string, error) {
	b, err := os.ReadFile(filepath.Join(bundle, VMDirFile))
	if err != nil {
		return "", err
	}
	dir := string(b)
	if !filepath.IsAbs(dir) || filepath.Clean(dir) != dir || !vmName.MatchString(filepath.Base(dir)) {
		return "", fmt.Errorf("%s in %s: %q is not the state directory of a VM of this shim: %w", VMDirFile, bundle, dir, errdefs.ErrInvalidArgument)
	}
	return dir, nil
}

// NetnsFile is the network namespace the shim made for a container whose
// spec asks for a new one and has hooks to configure it; HooksPendingFile
// says its poststop hooks have yet to run (for the cleanup after a shim
// that died).
const (
	NetnsFile        = "qemu-shim-netns"
	HooksPendingFile = "qemu-shim-poststop-pending"
)

// ShimAddress returns the socket address containerd recorded in a bundle:
// bootstrap.json (containerd 2.x) or the older address file.
func ShimAddress(bundle string) string {
	if b, err := os.ReadFile(filepath.Join(bundle, "bootstrap.json")); err == nil {
		var boot struct {
			Address string `json:"address"`
		}
		if json.Unmarshal(b, &boot) == nil && boot.Address != "" {
			return boot.Address
		}
	}
	if address, err := shim.ReadAddress(filepath.Join(bundle, "address")); err == nil {
		return address
	}
	return ""
}

// ReadSpec reads the bundle's config.json, as it is and decoded.
func ReadSpec(bundle string) ([]byte, *specs.Spec, error) {
	b, err := os.ReadFile(filepath.Join(bundle, "config.json"))
	if err != nil {
		return nil, nil, fmt.Errorf("read bundle config: %w", err)
	}
	var s specs.Spec
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, nil, fmt.Errorf("bundle config.json: %v: %w", err, errdefs.ErrInvalidArgument)
	}
	return b, &s, nil
}
