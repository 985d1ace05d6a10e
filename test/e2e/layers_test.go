package e2e

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/qemu-shim/qemu-shim/internal/busybox"
)

// TestManyLayerImages runs images the shape users pull: busybox under six
// more layers, each converted anew (the conversions run mkfs under the
// shim's signal handling, which once lost their exits to its reaper), and
// a hundred layers (more disks than a VM has PCIe slots). Each runs with
// containerd's runc shim too.
func TestManyLayerImages(t *testing.T) {
	ctx := requireEnv(t)
	for _, tc := range []struct {
		name   string
		extra  int
		rounds int
	}{{"7 layers", 6, 3}, {"100 layers", 99, 1}} {
		t.Run(tc.name, func(t *testing.T) {
			ref := "qemu-shim.dev/layers:" + strings.ReplaceAll(tc.name, " ", "-")
			if _, err := env.ImportBusybox(ctx, ref, tc.extra); err != nil {
				t.Fatal(err)
			}
			defer env.Client.ImageService().Delete(context.WithoutCancel(ctx), ref)
			// What each layer's file says, top layer first, then the bottom.
			script := "cat " + busybox.LayerFile(tc.extra) + " " + busybox.LayerFile(1) + "; ls /layers | wc -l"
			want := strings.Join([]string{strconv.Itoa(tc.extra), "1", strconv.Itoa(tc.extra)}, "\n") + "\n"
			for round := 0; round < tc.rounds; round++ {
				// Every round converts every layer again.
				clearLayerCache(t)
				for _, runtime := range []string{runtimeName, "io.containerd.runc.v2"} {
					var stderr strings.Builder
					cmd := ctrCommand(ctx, "run", "--rm", "--runtime", runtime, ref, "layers-"+strconv.Itoa(round), "sh", "-c", script)
					cmd.Stderr = &stderr
					out, err := cmd.Output()
					if err != nil || string(out) != want {
						t.Fatalf("round %d, %s: %v: output %q, want %q; stderr: %s", round, runtime, err, out, want, stderr.String())
					}
				}
			}
		})
	}
	if left := leftovers(); len(left) > 0 {
		t.Errorf("left behind: %v", left)
	}
}

func clearLayerCache(t *testing.T) {
	t.Helper()
	images, _ := filepath.Glob(filepath.Join(env.LayerCache(), "*.erofs"))
	for _, img := range images {
		if err := os.Remove(img); err != nil {
			t.Fatal(err)
		}
	}
}
