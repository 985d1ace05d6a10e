package task

import (
	"context"
	"fmt"
	"regexp"
	"strconv"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/containerd/log"
	specs "github.com/opencontainers/runtime-spec/specs-go"

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

// networkPath is the path of the network namespace the spec joins, or "".
func networkPath(spec *specs.Spec) string {
	if spec.Linux == nil {
		return ""
	}
	for _, ns := range spec.Linux.Namespaces {
		if ns.Type == specs.NetworkNamespace {
			return ns.Path
		}
	}
	return ""
}

// siblingNetns matches the network namespace of another container's
// process, as containerd's CRI plugin names the pod's for its containers
// (/proc/<the sandbox's pid>/ns/net).
var siblingNetns = regexp.MustCompile(`^/proc/([0-9]{1,10})/ns/net$`)

// resolveNetns returns the host-side network namespace a spec's container
// joins: its path, or, when the path names a process of one of this VM's
// containers (by the guest pid containerd was told), the namespace wired
// to the VM already ("" if none was). Called with s.mu held.
func (s *Service) resolveNetns(spec *specs.Spec) string {
	path := networkPath(spec)
	if m := siblingNetns.FindStringSubmatch(path); m != nil {
		pid, _ := strconv.ParseUint(m[1], 10, 32)
		for _, c := range s.containers {
			if c.pid == uint32(pid) {
				if s.net != nil {
					return s.net.ns.Path
				}
				return ""
			}
		}
	}
	return path
}

// joinNetwork wires the namespace at path to the VM, once per VM: the
// containers of a pod all name the pod's namespace. Called with s.mu held.
func (s *Service) joinNetwork(ctx context.Context, owner, path string) (retErr error) {
	if s.net != nil {
		if s.net.ns.Path != path {
			return fmt.Errorf("network namespace %s: this VM is wired to %s already (the containers of a VM share one network namespace): %w", path, s.net.ns.Path, errdefs.ErrInvalidArgument)
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
			s.unwire(ctx, w)
		}
	}()
	client, err := s.vm.TaskClient(ctx)
	if err != nil {
		return err
	}
	guest := networkapi.NewNetworkClient(client)
	for i, ep := range ns.Endpoints {
		id := "net" + strconv.Itoa(i)
		if err := s.vm.AttachNIC(ctx, vm.NIC{ID: id, Tap: ep.TapName, File: ep.Tap, MAC: ep.MAC.String()}); err != nil {
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
	s.net = w
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
// rules from the namespace.
func (s *Service) unwire(ctx context.Context, w *wiredNetwork) {
	if s.vm != nil && s.vm.State() == vm.StateRunning {
		// The guest takes each card's configuration down first.
		if client, err := s.vm.TaskClient(ctx); err == nil {
			guest := networkapi.NewNetworkClient(client)
			for i := range w.nics {
				if _, err := guest.RemoveInterface(ctx, &networkapi.RemoveInterfaceRequest{Mac: w.ns.Endpoints[i].MAC.String()}); err != nil {
					log.G(ctx).WithError(err).WithField("nic", w.nics[i]).Warn("take down the card in the guest")
				}
			}
		}
		for _, id := range w.nics {
			if err := s.vm.DetachNIC(ctx, id); err != nil {
				log.G(ctx).WithError(err).WithField("nic", id).Warn("detach network card")
			}
		}
	}
	if err := w.ns.Unwire(); err != nil {
		log.G(ctx).WithError(err).WithField("netns", w.ns.Path).Warn("unwire network namespace")
	}
}
