package main

// macs.go: MAC addresses as vCenter hands them out and checks them.
//
// vCenter assigns adapters MACs from 00:50:56:80:00:00–00:50:56:BF:FF:FF (addressType
// "assigned"); ESX generates 00:0c:29:… ("generated"). An administrator's static MAC ("manual")
// with VMware's OUI must lie in 00:50:56:00:00:00–00:50:56:3F:FF:FF, or the VM does not power on
// ("The MAC address entered is not in the valid range", vSphere 5.1 and later). A new VM that
// asks for an assigned or generated MAC keeps it only if it is in that type's range and no other
// VM has it, else it gets a fresh one — the API reference: "the server might override the
// specified value for Generated or Assigned if it does not fall in the right ranges or is
// determined to be a duplicate". Stock vcsim kept any MAC it was given and generated 00:0c:29
// ones for every type. The lab's own VMs get assigned MACs (networks.go).

import (
	"fmt"
	"strconv"
	"strings"
	"sync"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
)

var (
	macMu   sync.Mutex
	macNext = 0x800000 // the next assigned MAC's last three bytes (00:50:56:80:00:00 on)
	genNext = 0x100000 // the next generated MAC's last three bytes
)

// newMAC: a fresh MAC of addressType kind ("assigned" or "generated") no VM has.
func newMAC(kind string) string {
	macMu.Lock()
	defer macMu.Unlock()
	for {
		var mac string
		if kind == "generated" {
			mac = fmt.Sprintf("00:0c:29:%02x:%02x:%02x", genNext>>16&0xff, genNext>>8&0xff, genNext&0xff)
			genNext++
		} else {
			mac = fmt.Sprintf("00:50:56:%02x:%02x:%02x", macNext>>16&0xff, macNext>>8&0xff, macNext&0xff)
			macNext++
		}
		if macOwner(mac, nil) == "" {
			return mac
		}
	}
}

// macOwner: the name of a VM other than self with an adapter of MAC mac ("" when none).
func macOwner(mac string, self *simulator.VirtualMachine) string {
	for _, e := range simulator.Map.All("VirtualMachine") {
		other := vmOf(e)
		if other == nil || other == self || other.Config == nil {
			continue
		}
		for _, dev := range other.Config.Hardware.Device {
			if card, ok := dev.(types.BaseVirtualEthernetCard); ok &&
				strings.EqualFold(card.GetVirtualEthernetCard().MacAddress, mac) {
				return other.Name
			}
		}
	}
	return ""
}

func vmOf(e interface{}) *simulator.VirtualMachine {
	switch v := e.(type) {
	case *simulator.VirtualMachine:
		return v
	case *VM:
		return &v.VirtualMachine
	}
	return nil
}

// macByte: the i-th byte of mac, or -1.
func macByte(mac string, i int) int {
	parts := strings.Split(mac, ":")
	if len(parts) != 6 {
		return -1
	}
	b, err := strconv.ParseUint(parts[i], 16, 8)
	if err != nil {
		return -1
	}
	return int(b)
}

// inRange: whether mac is one vCenter would give an adapter of addressType kind.
func inRange(kind, mac string) bool {
	m := strings.ToLower(mac)
	switch kind {
	case "assigned":
		return strings.HasPrefix(m, "00:50:56:") && macByte(m, 3) >= 0x80 && macByte(m, 3) <= 0xbf
	case "generated":
		return strings.HasPrefix(m, "00:0c:29:")
	}
	return true
}

// normalizeMACs gives a new VM's assigned and generated adapters a MAC of their range that no
// other VM has (vCenter's override); manual MACs are left as asked.
func normalizeMACs(vm *simulator.VirtualMachine) {
	for _, dev := range vm.Config.Hardware.Device {
		card, ok := dev.(types.BaseVirtualEthernetCard)
		if !ok {
			continue
		}
		c := card.GetVirtualEthernetCard()
		kind := c.AddressType
		if kind == "" {
			kind = "assigned" // vCenter's default for the VMs it manages
			c.AddressType = kind
		}
		if kind != "assigned" && kind != "generated" {
			continue
		}
		if c.MacAddress == "" || !inRange(kind, c.MacAddress) || macOwner(c.MacAddress, vm) != "" {
			c.MacAddress = newMAC(kind)
		}
	}
}

// invalidStaticMAC: the first manual MAC with VMware's OUI above 00:50:56:3F:FF:FF ("" if none).
func invalidStaticMAC(vm *simulator.VirtualMachine) string {
	for _, dev := range vm.Config.Hardware.Device {
		if card, ok := dev.(types.BaseVirtualEthernetCard); ok {
			c := card.GetVirtualEthernetCard()
			m := strings.ToLower(c.MacAddress)
			if c.AddressType == "manual" && strings.HasPrefix(m, "00:50:56:") && macByte(m, 3) > 0x3f {
				return c.MacAddress
			}
		}
	}
	return ""
}

// PowerOnVMTask: ESX refuses to power on a VM with a static MAC outside the allowed range, or
// one whose disk a mover holds writable (hot-added for a restore in place).
func (vm *VM) PowerOnVMTask(ctx *simulator.Context, req *types.PowerOnVM_Task) soap.HasFault {
	if mac := invalidStaticMAC(&vm.VirtualMachine); mac != "" {
		ref := startTask(vm, vm.Name, "powerOn", false, failWith(fault(
			&types.InvalidArgument{InvalidProperty: "ethernet.address"},
			"The MAC address entered is not in the valid range: %s", mac)))
		return &methods.PowerOnVM_TaskBody{Res: &types.PowerOnVM_TaskResponse{Returnval: ref}}
	}
	if held := vm.lab().heldForWriting(vm); held != "" { // hotadd.go
		ref := startTask(vm, vm.Name, "powerOn", false, failWith(fault(
			&types.FileLocked{FileFault: types.FileFault{File: held}},
			"Failed to lock the file %s: it is in use by another virtual machine", held)))
		return &methods.PowerOnVM_TaskBody{Res: &types.PowerOnVM_TaskResponse{Returnval: ref}}
	}
	return vm.VirtualMachine.PowerOnVMTask(ctx, req)
}
