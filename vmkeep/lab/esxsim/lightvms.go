package main

// Lightweight VMs for inventory-at-scale tests: spec.LightVMs VMs named light-0001…, without
// disks, powered off, in the VM folder "light", spread over the hosts, their home on the first
// datastore. They are not lab VMs (no disks, not in the ready document's "vms"); only the
// ready document's light_vms count says they exist.

import (
	"context"
	"fmt"

	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/vim25/types"
)

func (lab *Lab) createLightVMs(ctx context.Context, vmFolder *object.Folder) error {
	if lab.spec.LightVMs <= 0 || len(lab.spec.Datastores) == 0 {
		return nil
	}
	folder, err := vmFolder.CreateFolder(ctx, "light")
	if err != nil {
		return err
	}
	ds := lab.spec.Datastores[0].Name
	pools := make([]*object.ResourcePool, len(lab.hosts))
	for i, h := range lab.hosts {
		if pools[i], err = object.NewHostSystem(lab.client, h.Self).ResourcePool(ctx); err != nil {
			return err
		}
	}
	for i := 1; i <= lab.spec.LightVMs; i++ {
		name := fmt.Sprintf("light-%04d", i)
		h := lab.hosts[i%len(lab.hosts)]
		cfg := types.VirtualMachineConfigSpec{Name: name, GuestId: "otherLinux64Guest", MemoryMB: 512, NumCPUs: 1,
			Files: &types.VirtualMachineFileInfo{VmPathName: fmt.Sprintf("[%s]", ds)}}
		task, err := folder.CreateVM(ctx, cfg, pools[i%len(lab.hosts)], object.NewHostSystem(lab.client, h.Self))
		if err != nil {
			return err
		}
		if _, err := task.WaitForResult(ctx, nil); err != nil {
			return fmt.Errorf("%s: %v", name, err)
		}
	}
	return nil
}
