package main

// The privileges vCenter checks on a VM's reconfiguration and snapshots, per change:
//
//   - ReconfigVM_Task: a disk added with a new file (fileOperation create) needs
//     VirtualMachine.Config.AddNewDisk, an existing file VirtualMachine.Config.AddExistingDisk, a
//     disk removed VirtualMachine.Config.RemoveDisk, changeTrackingEnabled
//     VirtualMachine.Config.ChangeTracking;
//   - CreateSnapshot(Ex)_Task needs VirtualMachine.State.CreateSnapshot; RemoveSnapshot_Task,
//     RemoveAllSnapshots_Task and ConsolidateVMDisks_Task VirtualMachine.State.RemoveSnapshot.
//
// guardSOAP (privileges.go) answers NoPermission naming the first privilege the user lacks.

import (
	"bytes"
	"regexp"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/types"
)

var (
	deviceChangeRe = regexp.MustCompile(`(?s)<deviceChange>(.*?)</deviceChange>`)
	diskDeviceRe   = regexp.MustCompile(`<device xsi:type="VirtualDisk"`)
)

// reconfigPrivileges: what a ReconfigVM_Task body asks for, in the order vCenter names them.
func reconfigPrivileges(body []byte) []string {
	var need []string
	for _, m := range deviceChangeRe.FindAllSubmatch(body, -1) {
		change := m[1]
		if !diskDeviceRe.Match(change) {
			continue
		}
		switch {
		case bytes.Contains(change, []byte("<operation>remove</operation>")):
			need = append(need, "VirtualMachine.Config.RemoveDisk")
		case bytes.Contains(change, []byte("<operation>add</operation>")) &&
			bytes.Contains(change, []byte("<fileOperation>create</fileOperation>")):
			need = append(need, "VirtualMachine.Config.AddNewDisk")
		case bytes.Contains(change, []byte("<operation>add</operation>")):
			need = append(need, "VirtualMachine.Config.AddExistingDisk")
		}
	}
	if bytes.Contains(body, []byte("<changeTrackingEnabled>")) {
		need = append(need, "VirtualMachine.Config.ChangeTracking")
	}
	return need
}

var snapshotPrivileges = map[string]string{
	"CreateSnapshot_Task":     "VirtualMachine.State.CreateSnapshot",
	"CreateSnapshotEx_Task":   "VirtualMachine.State.CreateSnapshot",
	"RemoveSnapshot_Task":     "VirtualMachine.State.RemoveSnapshot",
	"RemoveAllSnapshots_Task": "VirtualMachine.State.RemoveSnapshot",
	"ConsolidateVMDisks_Task": "VirtualMachine.State.RemoveSnapshot",
}

// snapshotVM: the VM whose privilege a snapshot's removal needs (vCenter checks the VM).
func snapshotVM(ref types.ManagedObjectReference, _ []byte) types.ManagedObjectReference {
	if ref.Type != "VirtualMachineSnapshot" {
		return ref
	}
	switch s := simulator.Map.Get(ref).(type) {
	case *Snapshot: // snapshots.go
		return s.Vm
	case *simulator.VirtualMachineSnapshot:
		return s.Vm
	}
	return ref
}
