package main

// Device labels as vSphere shows them: "Hard disk 1", "Network adapter 1", "SCSI controller 0".
// The simulator names devices after their type and key ("disk-202-1", "ethernet-0"), which no
// vCenter does, and administrators name disks by these labels (vmkeep's disk exclusions take
// them, as Veeam's do).  Disks and adapters are numbered from 1 in device order; controllers
// carry their bus number.

import (
	"fmt"

	"github.com/vmware/govmomi/vim25/types"
)

func vsphereLabels(devs []types.BaseVirtualDevice) {
	disks, nics := 0, 0
	for _, dev := range devs {
		var label string
		switch x := dev.(type) {
		case *types.VirtualDisk:
			disks++
			label = fmt.Sprintf("Hard disk %d", disks)
		case types.BaseVirtualEthernetCard:
			nics++
			label = fmt.Sprintf("Network adapter %d", nics)
		case types.BaseVirtualSCSIController:
			label = fmt.Sprintf("SCSI controller %d", x.GetVirtualSCSIController().BusNumber)
		case types.BaseVirtualSATAController:
			label = fmt.Sprintf("SATA controller %d", x.GetVirtualSATAController().BusNumber)
		case *types.VirtualNVMEController:
			label = fmt.Sprintf("NVME controller %d", x.BusNumber)
		default:
			continue
		}
		d := dev.GetVirtualDevice()
		if d.DeviceInfo == nil {
			d.DeviceInfo = &types.Description{Summary: label}
		}
		d.DeviceInfo.GetDescription().Label = label
	}
}
