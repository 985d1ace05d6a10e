package task

import (
	"context"
	"testing"

	"github.com/containerd/errdefs"

	volumeapi "github.com/qemu-shim/qemu-shim/api/volume/v1"
)

func TestMountRefusals(t *testing.T) {
	s := &Service{containers: map[string]*container{}, volumes: map[string]*volume{}}
	ctx := context.Background()
	for _, tc := range []struct {
		r     *volumeapi.MountRequest
		check func(error) bool
	}{
		{&volumeapi.MountRequest{ContainerId: "c", Serial: "../x", Target: "/data"}, errdefs.IsInvalidArgument},
		{&volumeapi.MountRequest{ContainerId: "c", Serial: "o1", Target: "/data", Fstype: "nfs"}, errdefs.IsInvalidArgument},
		{&volumeapi.MountRequest{ContainerId: "c", Serial: "o1", Target: "data"}, errdefs.IsInvalidArgument},
		{&volumeapi.MountRequest{ContainerId: "c", Serial: "o1", Target: "/"}, errdefs.IsInvalidArgument},
		{&volumeapi.MountRequest{ContainerId: "c", Serial: "o1", Target: "/data"}, errdefs.IsNotFound},
	} {
		if _, err := s.Mount(ctx, tc.r); !tc.check(err) {
			t.Errorf("Mount(%v): %v", tc.r, err)
		}
	}
	if _, err := s.Unmount(ctx, &volumeapi.UnmountRequest{Serial: "o1"}); !errdefs.IsNotFound(err) {
		t.Errorf("Unmount of a disk never mounted: %v", err)
	}
}
