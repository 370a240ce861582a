package main

// UnregisterVM of a lab VM (instant restore's cancel): the stock call removes it from the
// inventory; the lab also closes its disk files (they may live on a NAS datastore that is about
// to be unmounted) and forgets it, leaving its files in place as ESX does.

import (
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
)

func (vm *VM) UnregisterVM(ctx *simulator.Context, req *types.UnregisterVM) soap.HasFault {
	lab := vm.lab()
	res := vm.VirtualMachine.UnregisterVM(ctx, req)
	if res.Fault() != nil {
		return res
	}
	vm.st.mu.Lock()
	for _, d := range vm.st.disks {
		d.mu.Lock()
		for _, l := range d.layers {
			l.close()
		}
		d.mu.Unlock()
	}
	vm.st.mu.Unlock()
	lab.forget(vm)
	lab.detachTags(vm.Self.Value) // tagging.go
	return res
}
