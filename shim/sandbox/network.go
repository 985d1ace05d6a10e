package sandbox

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/containerd/log"

	networkapi "github.com/qemu-shim/qemu-shim/api/network/v1"
	"github.com/qemu-shim/qemu-shim/shim/network"
	"github.com/qemu-shim/qemu-shim/vm"
)

// wiredNetwork is the host-side network namespace wired to the VM, with
// the cards that stand in for its interfaces.
type wiredNetwork struct {
	ns   *network.Namespace
	nics []string // QEMU device ids
	// owner is the container whose create wired it (a pod's sandbox).
	owner string
}

// JoinNetwork wires the namespace at path to the VM, once per VM: the
// containers of a pod all name the pod's namespace.
func (v *VM) JoinNetwork(ctx context.Context, owner, path string) (retErr error) {
	v.netMu.Lock()
	defer v.netMu.Unlock()
	if v.net != nil {
		if v.net.ns.Path != path {
			return fmt.Errorf("network namespace %s: this VM is wired to %s already (the containers of a VM share one network namespace): %w", path, v.net.ns.Path, errdefs.ErrInvalidArgument)
		}
		return nil
	}
	began := time.Now()
	ns, err := network.Wire(path)
	if err != nil {
		return err
	}
	w := &wiredNetwork{ns: ns, owner: owner}
	defer func() {
		if retErr != nil {
			v.unwire(ctx, w)
		}
	}()
	client, err := v.inst.TaskClient(ctx)
	if err != nil {
		return err
	}
	guest := networkapi.NewNetworkClient(client)
	for i, ep := range ns.Endpoints {
		id := "net" + strconv.Itoa(i)
		if err := v.inst.AttachNIC(ctx, vm.NIC{ID: id, Tap: ep.TapName, File: ep.Tap, MAC: ep.MAC.String()}); err != nil {
			return fmt.Errorf("network card for %s of %s: %w", ep.Name, path, err)
		}
		w.nics = append(w.nics, id)
		// QEMU holds the tap now: it lives and dies with QEMU.
		ep.Tap.Close()
		ep.Tap = nil
		if _, err := guest.ConfigureInterface(ctx, interfaceRequest(ep)); err != nil {
			return fmt.Errorf("configure %s of %s in the guest: %w", ep.Name, path, errgrpc.ToNative(err))
		}
	}
	v.net = w
	log.G(ctx).WithField("netns", path).WithField("interfaces", len(ns.Endpoints)).WithField("took", time.Since(began)).Debug("network namespace wired to the VM")
	return nil
}

func interfaceRequest(ep *network.Endpoint) *networkapi.ConfigureInterfaceRequest {
	r := &networkapi.ConfigureInterfaceRequest{Name: ep.Name, Mac: ep.MAC.String(), Mtu: uint32(ep.MTU)}
	for _, a := range ep.Addrs {
		r.Addresses = append(r.Addresses, a.String())
	}
	for _, rt := range ep.Routes {
		gr := &networkapi.Route{Metric: uint32(rt.Metric)}
		if rt.Dst.IsValid() {
			gr.Destination = rt.Dst.String()
		}
		if rt.Gateway.IsValid() {
			gr.Gateway = rt.Gateway.String()
		}
		if rt.Src.IsValid() {
			gr.Source = rt.Src.String()
		}
		r.Routes = append(r.Routes, gr)
	}
	return r
}

// unwire unplugs the cards (while the VM runs) and removes the taps and tc
// rules from the namespace. Called with v.netMu held.
func (v *VM) unwire(ctx context.Context, w *wiredNetwork) {
	if v.running() {
		// The guest takes each card's configuration down first.
		if client, err := v.inst.TaskClient(ctx); err == nil {
			guest := networkapi.NewNetworkClient(client)
			for i := range w.nics {
				if _, err := guest.RemoveInterface(ctx, &networkapi.RemoveInterfaceRequest{Mac: w.ns.Endpoints[i].MAC.String()}); err != nil {
					log.G(ctx).WithError(err).WithField("nic", w.nics[i]).Warn("take down the card in the guest")
				}
			}
		}
		for _, id := range w.nics {
			if err := v.inst.DetachNIC(ctx, id); err != nil {
				log.G(ctx).WithError(err).WithField("nic", id).Warn("detach network card")
			}
		}
	}
	if err := w.ns.Unwire(); err != nil {
		log.G(ctx).WithError(err).WithField("netns", w.ns.Path).Warn("unwire network namespace")
	}
}

// NetworkPath is the namespace wired to the VM, "" if none.
func (v *VM) NetworkPath() string {
	v.netMu.Lock()
	defer v.netMu.Unlock()
	if v.net == nil {
		return ""
	}
	return v.net.ns.Path
}
