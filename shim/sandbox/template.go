package sandbox

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/containerd/log"

	"github.com/qemu-shim/qemu-shim/shim/config"
	"github.com/qemu-shim/qemu-shim/vm"
	"github.com/qemu-shim/qemu-shim/vm/template"
)

// restoreTimeout bounds a start from a template before the VM is booted
// instead.
var restoreTimeout = 30 * time.Second

// start restores the VM from its shape's template where templates are
// enabled and one can be had, and boots it otherwise (saying why).
func start(ctx context.Context, cfg config.Config, vcfg vm.Config) (*vm.Instance, error) {
	if cfg.Template.Enabled {
		inst, err := restore(ctx, cfg, vcfg)
		if err == nil {
			return inst, nil
		}
		if ctx.Err() != nil {
			return nil, err
		}
		log.G(ctx).WithError(err).Warn("VM template not used: booting the VM instead")
	}
	inst, err := vm.New(vcfg)
	if err != nil {
		return nil, err
	}
	if err := inst.Start(ctx); err != nil {
		return nil, err
	}
	return inst, nil
}

// TemplateConfig is the VM a template is saved from: the configured base
// size (a VM restored from it is grown to what its containers ask).
func TemplateConfig(cfg config.Config) (vm.Config, error) {
	base, err := cfg.VM.Machine(config.Size{})
	if err != nil {
		return vm.Config{}, err
	}
	return vmConfig(cfg, "template", base), nil
}

// TemplateStore is the configured store of templates.
func TemplateStore(cfg config.Config) *template.Store {
	return &template.Store{Dir: cfg.Template.Dir, MaxAge: cfg.Template.MaxAge.Duration}
}

// restore starts the VM from the template of the configured base size
// (the caller grows it); a template QEMU cannot restore is marked broken.
func restore(ctx context.Context, cfg config.Config, vcfg vm.Config) (*vm.Instance, error) {
	t, err := TemplateConfig(cfg)
	if err != nil {
		return nil, err
	}
	store := TemplateStore(cfg)
	saved, err := store.Get(ctx, t)
	if err != nil {
		return nil, err
	}
	// The VM's own name, state root and share, the template's shape. Its
	// memory is a file of the shim's, shared with QEMU (and virtiofsd).
	vcfg.CPUs, vcfg.MaxCPUs, vcfg.MemoryMiB, vcfg.MaxMemoryMiB, vcfg.VirtioMemMiB =
		t.CPUs, t.MaxCPUs, t.MemoryMiB, t.MaxMemoryMiB, t.VirtioMemMiB
	vcfg.Restore = saved
	vcfg.WarmUp = cfg.Template.WarmUp
	vcfg.BootTimeout = min(vcfg.BootTimeout, restoreTimeout)
	inst, err := vm.New(vcfg)
	if err != nil {
		return nil, err
	}
	if err := inst.Start(ctx); err != nil {
		if errors.Is(err, vm.ErrRestore) {
			if merr := store.MarkBroken(saved, err.Error()); merr != nil {
				log.G(ctx).WithError(merr).Warn("mark the template broken")
			}
		}
		return nil, fmt.Errorf("restore from template %s: %w", saved, err)
	}
	return inst, nil
}
