package main

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/containerd/containerd/v2/pkg/oci"

	"github.com/qemu-shim/qemu-shim/api/wire"
	"github.com/qemu-shim/qemu-shim/test/guestimage"
	"github.com/qemu-shim/qemu-shim/test/rig"
	"github.com/qemu-shim/qemu-shim/vm"
)

// runtimeTimes are one guest's calls to the task service with one OCI
// runtime: the first container after boot (create, start, delete of
// `true`), then a second one's create+start, an exec round trip and its
// delete.
type runtimeTimes struct {
	firstCreate, firstStart, firstDelete []float64
	create, exec, delete                 []float64
}

// runtimesSection compares the guest's OCI runtimes: each run boots one VM
// per runtime, in turns, and times the task service's calls with it.
func runtimesSection(work string, img guestimage.Image, runs int) error {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	layer, err := rig.BusyboxLayer(work)
	if err != nil {
		return err
	}
	results := map[string]*runtimeTimes{}
	for _, name := range wire.OCIRuntimes {
		results[name] = &runtimeTimes{}
	}
	for i := 0; i < runs; i++ {
		for _, name := range wire.OCIRuntimes {
			if err := runtimeRun(ctx, work, img, layer, name, i, results[name]); err != nil {
				return fmt.Errorf("%s: %w", name, err)
			}
		}
	}
	for _, name := range wire.OCIRuntimes {
		t := results[name]
		row(name+": first create after boot (s)", t.firstCreate)
		row(name+": first start (s)", t.firstStart)
		row(name+": first delete (s)", t.firstDelete)
		row(name+": next create+start (s)", t.create)
		row(name+": exec round trip (s)", t.exec)
		row(name+": next delete (s)", t.delete)
	}
	c, r := results[wire.RuntimeCrun], results[wire.RuntimeRunc]
	fmt.Printf("ratio crun / runc: first create %.2f, first start %.2f, exec %.2f, next create+start %.2f\n",
		median(c.firstCreate)/median(r.firstCreate), median(c.firstStart)/median(r.firstStart), median(c.exec)/median(r.exec), median(c.create)/median(r.create))
	return nil
}

func runtimeRun(ctx context.Context, work string, img guestimage.Image, layer, name string, i int, t *runtimeTimes) error {
	inst, err := vm.New(vm.Config{ID: "rt-" + name + strconv.Itoa(i), StateRoot: work, Kernel: img.Kernel, Initrd: img.Initrd, Tools: img.Tools,
		Disks: []vm.Disk{{ID: rig.LayerSerial, Path: layer, ReadOnly: true}}})
	if err != nil {
		return err
	}
	if err := inst.Start(ctx); err != nil {
		return err
	}
	defer inst.Shutdown(ctx)
	r, err := rig.New(inst, work)
	if err != nil {
		return err
	}
	defer r.Disconnect()
	opts := rig.CreateOpts{Spec: []oci.SpecOpts{oci.WithAnnotations(map[string]string{wire.OCIRuntimeAnnotation: name})}}
	timed := func(into *[]float64, f func() error) error {
		start := time.Now()
		if err := f(); err != nil {
			return err
		}
		*into = append(*into, time.Since(start).Seconds())
		return nil
	}
	for n, id := range []string{"first", "next"} {
		if err := r.AttachUpper(ctx, id); err != nil {
			return err
		}
		var p *rig.Proc
		create := func() (err error) { p, err = r.CreateAttached(ctx, id, []string{"true"}, opts); return err }
		start := func() error { return r.Start(ctx, id, "") }
		if n == 0 {
			if err := timed(&t.firstCreate, create); err != nil {
				return err
			}
			if err := timed(&t.firstStart, start); err != nil {
				return err
			}
		} else {
			both := func() error {
				if err := create(); err != nil {
					return err
				}
				return start()
			}
			if err := timed(&t.create, both); err != nil {
				return err
			}
		}
		if _, err := r.Wait(ctx, id, ""); err != nil {
			return err
		}
		<-p.OutEOF
		del := &t.firstDelete
		if n == 1 {
			del = &t.delete
		}
		if err := timed(del, func() error { return r.Remove(ctx, id) }); err != nil {
			return err
		}
	}
	if _, err := r.Create(ctx, "execs", []string{"sleep", "1000"}, opts); err != nil {
		return err
	}
	if err := r.Start(ctx, "execs", ""); err != nil {
		return err
	}
	return timed(&t.exec, func() error {
		if err := r.Exec(ctx, "execs", "e", nil, "true"); err != nil {
			return err
		}
		if err := r.Start(ctx, "execs", "e"); err != nil {
			return err
		}
		_, err := r.Wait(ctx, "execs", "e")
		return err
	})
}
