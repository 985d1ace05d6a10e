package operator

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"testing"

	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/containerd/ttrpc"

	operatorapi "github.com/qemu-shim/qemu-shim/api/operator/v1"
	"github.com/qemu-shim/qemu-shim/shim/sandbox"
)

func TestCheckImage(t *testing.T) {
	root, other := t.TempDir(), t.TempDir()
	img := filepath.Join(root, "a.img")
	outside := filepath.Join(other, "b.img")
	for _, p := range []string{img, outside} {
		if err := os.WriteFile(p, nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	escape := filepath.Join(root, "escape.img")
	if err := os.Symlink(outside, escape); err != nil {
		t.Fatal(err)
	}
	inner := filepath.Join(root, "inner.img")
	if err := os.Symlink(img, inner); err != nil {
		t.Fatal(err)
	}
	roots := []string{root}
	for _, tc := range []struct {
		image string
		roots []string
		check func(error) bool
	}{
		{img, roots, func(err error) bool { return err == nil }},
		{inner, roots, func(err error) bool { return err == nil }},
		{outside, roots, errdefs.IsPermissionDenied},
		{escape, roots, errdefs.IsPermissionDenied},
		{root + "/../" + filepath.Base(other) + "/b.img", roots, errdefs.IsPermissionDenied},
		{root, roots, errdefs.IsPermissionDenied},
		{filepath.Join(root, "missing.img"), roots, errdefs.IsNotFound},
		{"a.img", roots, errdefs.IsInvalidArgument},
		{img, nil, errdefs.IsPermissionDenied},
	} {
		got, err := CheckImage(tc.roots, tc.image)
		if !tc.check(err) {
			t.Errorf("CheckImage(%v, %s) = %q, %v", tc.roots, tc.image, got, err)
		}
	}
	if dir := filepath.Join(root, "dir"); os.Mkdir(dir, 0o700) == nil {
		if _, err := CheckImage(roots, dir); !errdefs.IsInvalidArgument(err) {
			t.Errorf("a directory: %v", err)
		}
	}
}

type fakeDisks struct{ attached []sandbox.OperatorDisk }

func (f *fakeDisks) AttachOperatorDisk(ctx context.Context, d sandbox.OperatorDisk) (sandbox.OperatorDisk, error) {
	d.Serial = "o1"
	f.attached = append(f.attached, d)
	return d, nil
}
func (f *fakeDisks) DetachOperatorDisk(ctx context.Context, container, serial string, force bool) error {
	return nil
}
func (f *fakeDisks) OperatorDisks() []sandbox.OperatorDisk { return f.attached }

// TestServer talks to the server over its socket: refusals arrive as the
// errdefs errors they were.
func TestServer(t *testing.T) {
	root := t.TempDir()
	img := filepath.Join(root, "a.img")
	if err := os.WriteFile(img, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	disks := &fakeDisks{}
	s := &Server{Namespace: "ns", Roots: []string{root}, Disks: disks, Containers: func() []string { return []string{"c1"} }}
	socket := filepath.Join(t.TempDir(), SocketName)
	ctx := context.Background()
	stop, err := s.Serve(ctx, socket)
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	c, err := dialUnix(socket)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	client := operatorapi.NewDisksClient(c)
	if _, err := client.Attach(ctx, &operatorapi.AttachRequest{ContainerId: "c2", Image: img}); !errdefs.IsNotFound(errgrpc.ToNative(err)) {
		t.Errorf("unknown container: %v", err)
	}
	if _, err := client.Attach(ctx, &operatorapi.AttachRequest{ContainerId: "c1", Image: img, Mount: "rel"}); !errdefs.IsInvalidArgument(errgrpc.ToNative(err)) {
		t.Errorf("relative mount path: %v", err)
	}
	d, err := client.Attach(ctx, &operatorapi.AttachRequest{ContainerId: "c1", Image: img, Mount: "/data/"})
	if err != nil || d.Serial != "o1" || d.Mount != "/data" || d.Fstype != "ext4" {
		t.Fatalf("attach: %v, %v", d, err)
	}
	resp, err := client.List(ctx, &operatorapi.ListRequest{ContainerId: "c1"})
	if err != nil || resp.Namespace != "ns" || len(resp.Containers) != 1 || len(resp.Disks) != 1 {
		t.Errorf("list: %v, %v", resp, err)
	}
}

func dialUnix(path string) (*ttrpc.Client, error) {
	conn, err := (&net.Dialer{}).Dial("unix", path)
	if err != nil {
		return nil, err
	}
	return ttrpc.NewClient(conn), nil
}
