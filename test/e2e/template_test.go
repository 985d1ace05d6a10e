package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/qemu-shim/qemu-shim/vm/template"
)

// TestVMTemplate: containers start from the VM template the daemon's first
// VM built; each restored VM draws its own random numbers and has its own
// boot_id; a template that cannot be restored falls back to a booted VM,
// is marked broken and is no longer used; removed, it is built again.
func TestVMTemplate(t *testing.T) {
	ctx := requireEnv(t)
	store := &template.Store{Dir: env.TemplateDir()}
	probe := "head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \\n'; echo; cat /proc/sys/kernel/random/boot_id"
	run := func(id string) []string {
		t.Helper()
		status, out := mustContainer(ctx, t, id, "sh", "-c", probe).finish(ctx)
		fields := strings.Fields(out)
		if status != 0 || len(fields) != 2 {
			t.Fatalf("%s: exit %d, output %q", id, status, out)
		}
		return fields
	}
	first := run("tmpl-a")
	list, err := store.List()
	if err != nil || len(list) != 1 {
		t.Fatalf("templates after a container ran: %+v, %v", list, err)
	}
	tmpl := list[0]
	if tmpl.Broken != "" || time.Since(tmpl.LastUsed) > time.Minute {
		t.Fatalf("template %+v: want one in use, not broken", tmpl)
	}
	t.Logf("template %s: %d bytes, booted in %v, saved in %v", tmpl.Key, tmpl.Bytes, tmpl.Boot, tmpl.Save)
	second := run("tmpl-b")
	if first[0] == second[0] || first[1] == second[1] {
		t.Errorf("two VMs restored from one template share random numbers or boot_id: %v, %v", first, second)
	}

	// A template QEMU cannot load: the container still runs, in a booted VM.
	state := filepath.Join(env.TemplateDir(), tmpl.Key, "state")
	if err := os.WriteFile(state, []byte("not a VM state"), 0o600); err != nil {
		t.Fatal(err)
	}
	run("tmpl-c")
	if list, err = store.List(); err != nil || len(list) != 1 || list[0].Broken == "" {
		t.Fatalf("templates after a failed restore: %+v, %v: want it marked broken", list, err)
	}
	t.Logf("marked broken: %s", list[0].Broken)
	run("tmpl-d") // booted again, without trying the broken template
	if err := store.Remove(tmpl.Key); err != nil {
		t.Fatal(err)
	}
	run("tmpl-e")
	if list, err = store.List(); err != nil || len(list) != 1 || list[0].Broken != "" {
		t.Fatalf("templates after removing the broken one: %+v, %v: want it built again", list, err)
	}
}
