// Package operator is the shim's operator API (api/operator/v1), served
// on a Unix socket in the VM's state directory (SocketName) for the
// 'qemu-shim disk' commands: it attaches disk images below the configured
// operator.disk_roots to a running container, mounts them in it if asked,
// detaches them (a mounted one only with force) and lists them. Every
// refusal says why, with an errdefs error (a gRPC status on the wire).
package operator

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/containerd/log"
	"github.com/containerd/ttrpc"

	operatorapi "github.com/qemu-shim/qemu-shim/api/operator/v1"
	"github.com/qemu-shim/qemu-shim/shim/sandbox"
)

// SocketName is the operator's socket in the VM's state directory.
const SocketName = "operator.sock"

// Server serves the operator's API for one shim's VM.
type Server struct {
	// Namespace is the containerd namespace of the shim's containers.
	Namespace string
	// Roots are the directories images must be below.
	Roots []string
	Disks sandbox.OperatorDisks
	// Containers lists the shim's containers.
	Containers func() []string
}

var _ operatorapi.DisksService = (*Server)(nil)

// Serve listens on socket (made private to root) until stop is called.
func (s *Server) Serve(ctx context.Context, socket string) (stop func(), err error) {
	os.Remove(socket)
	l, err := net.Listen("unix", socket)
	if err != nil {
		return nil, err
	}
	if err := os.Chmod(socket, 0o600); err != nil {
		l.Close()
		return nil, err
	}
	server, err := ttrpc.NewServer(ttrpc.WithUnaryServerInterceptor(func(ctx context.Context, unmarshal ttrpc.Unmarshaler, info *ttrpc.UnaryServerInfo, method ttrpc.Method) (any, error) {
		resp, err := method(ctx, unmarshal)
		if err != nil {
			log.G(ctx).WithError(err).WithField("method", info.FullMethod).Info("operator request refused")
		}
		return resp, errgrpc.ToGRPC(err)
	}))
	if err != nil {
		l.Close()
		return nil, err
	}
	operatorapi.RegisterDisksService(server, s)
	go func() {
		if err := server.Serve(ctx, l); err != nil && !errors.Is(err, ttrpc.ErrServerClosed) {
			log.G(ctx).WithError(err).Warn("operator socket")
		}
	}()
	return func() {
		server.Close()
		os.Remove(socket)
	}, nil
}

// Attach checks the image and the container, then has the sandbox attach
// (and mount) the disk.
func (s *Server) Attach(ctx context.Context, r *operatorapi.AttachRequest) (*operatorapi.Disk, error) {
	if err := s.hasContainer(r.ContainerId); err != nil {
		return nil, err
	}
	image, err := CheckImage(s.Roots, r.Image)
	if err != nil {
		return nil, err
	}
	mount := r.Mount
	if mount != "" {
		if !filepath.IsAbs(mount) || filepath.Clean(mount) == "/" {
			return nil, fmt.Errorf("mount path %q: want an absolute path in the container other than /: %w", mount, errdefs.ErrInvalidArgument)
		}
		mount = filepath.Clean(mount)
	}
	fstype := r.Fstype
	if mount != "" && fstype == "" {
		fstype = "ext4"
	}
	d, err := s.Disks.AttachOperatorDisk(ctx, sandbox.OperatorDisk{
		Container: r.ContainerId, Image: image, ReadOnly: r.ReadOnly, Mount: mount, FSType: fstype,
	})
	if err != nil {
		return nil, fmt.Errorf("attach %s to container %s: %w", image, r.ContainerId, err)
	}
	return toAPI(d), nil
}

// Detach has the sandbox detach a disk of the container.
func (s *Server) Detach(ctx context.Context, r *operatorapi.DetachRequest) (*operatorapi.DetachResponse, error) {
	if err := s.hasContainer(r.ContainerId); err != nil {
		return nil, err
	}
	if err := s.Disks.DetachOperatorDisk(ctx, r.ContainerId, r.Serial, r.Force); err != nil {
		return nil, err
	}
	return &operatorapi.DetachResponse{}, nil
}

// List reports the shim's containers and the operator's disks.
func (s *Server) List(ctx context.Context, r *operatorapi.ListRequest) (*operatorapi.ListResponse, error) {
	resp := &operatorapi.ListResponse{Namespace: s.Namespace, Containers: s.Containers()}
	for _, d := range s.Disks.OperatorDisks() {
		if r.ContainerId == "" || d.Container == r.ContainerId {
			resp.Disks = append(resp.Disks, toAPI(d))
		}
	}
	return resp, nil
}

func (s *Server) hasContainer(id string) error {
	if id == "" {
		return fmt.Errorf("no container named: %w", errdefs.ErrInvalidArgument)
	}
	if !slices.Contains(s.Containers(), id) {
		return fmt.Errorf("no container %s in this VM (namespace %s): %w", id, s.Namespace, errdefs.ErrNotFound)
	}
	return nil
}

func toAPI(d sandbox.OperatorDisk) *operatorapi.Disk {
	return &operatorapi.Disk{Serial: d.Serial, ContainerId: d.Container, Image: d.Image, ReadOnly: d.ReadOnly, Mount: d.Mount, Fstype: d.FSType}
}

// CheckImage resolves image (an absolute path, symlinks followed) and
// returns it if it is a regular file below one of roots.
func CheckImage(roots []string, image string) (string, error) {
	if !filepath.IsAbs(image) {
		return "", fmt.Errorf("image %q: want an absolute path: %w", image, errdefs.ErrInvalidArgument)
	}
	if len(roots) == 0 {
		return "", fmt.Errorf("image %s: operator.disk_roots is empty, so no image may be attached: %w", image, errdefs.ErrPermissionDenied)
	}
	real, err := filepath.EvalSymlinks(image)
	if err != nil {
		if os.IsNotExist(err) {
			return "", fmt.Errorf("image %s: %w", image, errdefs.ErrNotFound)
		}
		return "", fmt.Errorf("image %s: %w", image, err)
	}
	inside := false
	for _, root := range roots {
		r, err := filepath.EvalSymlinks(root)
		if err != nil {
			continue // a root that does not exist holds nothing
		}
		if rel, err := filepath.Rel(r, real); err == nil && rel != "." && rel != ".." && !strings.HasPrefix(rel, "../") {
			inside = true
			break
		}
	}
	if !inside {
		return "", fmt.Errorf("image %s (%s) is not below operator.disk_roots %v: %w", image, real, roots, errdefs.ErrPermissionDenied)
	}
	st, err := os.Stat(real)
	if err != nil {
		return "", fmt.Errorf("image %s: %w", image, err)
	}
	if !st.Mode().IsRegular() {
		return "", fmt.Errorf("image %s is not a regular file (%s): %w", image, st.Mode().Type(), errdefs.ErrInvalidArgument)
	}
	return real, nil
}
