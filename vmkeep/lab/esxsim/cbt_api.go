package main

// vSphere API side of CBT: QueryChangedDiskAreas, and ReconfigVM handling of
// changeTrackingEnabled and disk resizes.

import (
	"fmt"
	"io/ioutil"
	"os"
	"path/filepath"
	"strings"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
)

func soapFault(msg string, f types.BaseMethodFault) *soap.Fault {
	return simulator.Fault(msg, f)
}

func (vm *VM) ctkPath(d *Disk) string {
	base := d.layers[0]
	return fmt.Sprintf("[%s] %s-ctk.vmdk", base.ds, strings.TrimSuffix(base.rel, ".vmdk"))
}

func (vm *VM) QueryChangedDiskAreas(req *types.QueryChangedDiskAreas) soap.HasFault {
	body := &methods.QueryChangedDiskAreasBody{}
	res, f := vm.queryChangedDiskAreas(req)
	if f != nil {
		body.Fault_ = soapFault(f.msg, f.fault)
		return body
	}
	body.Res = &types.QueryChangedDiskAreasResponse{Returnval: *res}
	return body
}

func (vm *VM) queryChangedDiskAreas(req *types.QueryChangedDiskAreas) (*types.DiskChangeInfo, *labFault) {
	st := vm.st
	st.mu.Lock()
	defer st.mu.Unlock()
	d := vm.disk(req.DeviceKey)
	if d == nil {
		return nil, fault(&types.InvalidArgument{InvalidProperty: "deviceKey"}, "A specified parameter was not correct: deviceKey")
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if req.StartOffset < 0 || req.StartOffset > d.Capacity {
		return nil, fault(&types.InvalidArgument{InvalidProperty: "startOffset"}, "A specified parameter was not correct: startOffset")
	}
	upto := len(d.layers) - 1
	toEpoch := -1
	cbtUUID := ""
	if req.Snapshot != nil {
		rec := st.snaps[req.Snapshot.Value]
		if rec == nil {
			return nil, fault(&types.ManagedObjectNotFound{Obj: *req.Snapshot}, "The object has already been deleted or has not been completely created")
		}
		if l := rec.frozen[d.Key]; l != nil {
			upto = d.layerIndex(l)
		}
		if id, ok := rec.changeID[d.Key]; ok && id != "" {
			toEpoch = rec.epoch[d.Key]
			cbtUUID = rec.cbtUUID[d.Key]
		}
	} else {
		if vm.Runtime.PowerState != types.VirtualMachinePowerStatePoweredOff {
			return nil, fault(&types.InvalidArgument{InvalidProperty: "snapshot"}, "A specified parameter was not correct: snapshot")
		}
		if d.cbt != nil {
			toEpoch = d.cbt.epoch + 1
			cbtUUID = d.cbt.uuid
		}
	}
	if !vm.cbtEnabled() || d.cbt == nil || toEpoch < 0 {
		return nil, fault(&types.FileFault{File: vm.ctkPath(d)}, "Error caused by file %s", vm.ctkPath(d))
	}
	var areas []extent
	if req.ChangeId == "*" {
		areas = vm.allocatedAnswer(d, upto)
	} else {
		u, n, ok := parseChangeID(req.ChangeId)
		if !ok {
			return nil, fault(&types.InvalidArgument{InvalidProperty: "changeId"}, "A specified parameter was not correct: changeId")
		}
		if u != cbtUUID || u != d.cbt.uuid || n > toEpoch {
			return nil, fault(&types.FileFault{File: vm.ctkPath(d)}, "Error caused by file %s", vm.ctkPath(d))
		}
		areas = d.cbt.changedSince(n, toEpoch, d.Capacity)
		if r := vm.lab().faults.take("cbt_lie", vm.Name); r != nil {
			areas = lie(areas)
		}
	}
	page := vm.lab().qcdaPage()
	info := &types.DiskChangeInfo{StartOffset: req.StartOffset}
	end := d.Capacity
	for _, a := range areas {
		if a.start+a.length <= req.StartOffset {
			continue
		}
		if a.start < req.StartOffset {
			a.length -= req.StartOffset - a.start
			a.start = req.StartOffset
		}
		if len(info.ChangedArea) >= page {
			end = a.start
			break
		}
		info.ChangedArea = append(info.ChangedArea, types.DiskChangeExtent{Start: a.start, Length: a.length})
	}
	info.Length = end - req.StartOffset
	return info, nil
}

// allocatedAnswer is what ESX answers to changeId "*": right only on VMFS for disks whose CBT
// was enabled without snapshots (KB 1020128).
func (vm *VM) allocatedAnswer(d *Disk, upto int) []extent {
	if vm.lab().dsTypes[d.layers[0].ds] == "NFS" {
		return []extent{{0, d.Capacity}}
	}
	if !d.cbt.snapsAtEnable {
		return d.allocatedExtents(upto)
	}
	var held []extent // the bug: only what the delta layers hold
	for i := 1; i <= upto; i++ {
		if l := d.layers[i]; l.delta != nil {
			held = append(held, deltaExtents(l, d.Capacity)...)
		}
	}
	return mergeExtents(held)
}

// lie is the cbt_lie fault: a CBT bug that omits written areas (every other one, starting
// with the first; a single area is omitted altogether).
func lie(areas []extent) []extent {
	var out []extent
	for i, a := range areas {
		if i%2 == 1 {
			out = append(out, a)
		}
	}
	return out
}

// resetCBT starts a new change-tracking identity for d (older changeIds fail).
func (vm *VM) resetCBT(d *Disk) {
	if vm.cbtEnabled() {
		d.cbt = newTracker(true)
		vm.writeCtk(d)
	} else {
		d.cbt = nil
	}
}

func (vm *VM) writeCtk(d *Disk) {
	p := vm.lab().localPath(vm.ctkPath(d))
	_ = ioutil.WriteFile(p, []byte(fmt.Sprintf("vmkeep lab change tracking %s\n", d.cbt.uuid)), 0o600)
}

func (vm *VM) ReconfigVMTask(ctx *simulator.Context, req *types.ReconfigVM_Task) soap.HasFault {
	ref := startTask(vm, vm.Name, "reconfigVm", false, func() (types.AnyType, *labFault) {
		if f := vm.hostConnected(); f != nil {
			return nil, f
		}
		st := vm.st
		st.mu.Lock()
		defer st.mu.Unlock()
		spec := req.Spec
		if f := vm.addedDiskDatastores(spec.DeviceChange); f != nil { // diskmove.go
			return nil, f
		}
		if f := vm.hotaddReconfig(&spec); f != nil {
			return nil, f
		}
		// Disk edits: capacity changes are ours; other edits of our disks are ignored.
		var rest []types.BaseVirtualDeviceConfigSpec
		for _, dc := range spec.DeviceChange {
			c := dc.GetVirtualDeviceConfigSpec()
			disk, ok := c.Device.(*types.VirtualDisk)
			if !ok || vm.disk(disk.Key) == nil {
				rest = append(rest, dc)
				continue
			}
			d := vm.disk(disk.Key)
			if c.Operation == types.VirtualDeviceConfigSpecOperationRemove && vm.detachDisk(d, c.FileOperation) {
				rest = append(rest, dc)
				continue
			}
			if c.Operation != types.VirtualDeviceConfigSpecOperationEdit {
				return nil, fault(&types.NotSupported{}, "vmkeep lab: only editing existing disks is supported")
			}
			if f := vm.editDiskMode(d, disk); f != nil {
				return nil, f
			}
			newCap := disk.CapacityInBytes
			if newCap == 0 {
				newCap = disk.CapacityInKB * 1024
			}
			if newCap != 0 && newCap != d.Capacity {
				if newCap < d.Capacity {
					return nil, fault(&types.InvalidDeviceOperation{}, "Invalid operation for device '%d': shrinking a disk is not supported", d.Key)
				}
				if len(st.snaps) > 0 {
					return nil, fault(&types.InvalidState{}, "The operation is not allowed in the current state: the virtual machine has snapshots")
				}
				d.mu.Lock()
				err := d.layers[0].flat.Truncate(newCap)
				if err == nil {
					d.Capacity = newCap
					rewriteDescriptorSize(d.layers[0], newCap)
					vm.resetCBT(d)
				}
				d.mu.Unlock()
				if err != nil {
					return nil, fault(&types.FileFault{File: d.layers[0].dsPath()}, "cannot extend disk: %v", err)
				}
			}
		}
		spec.DeviceChange = rest
		if spec.ChangeTrackingEnabled != nil && *spec.ChangeTrackingEnabled != vm.cbtEnabled() {
			if *spec.ChangeTrackingEnabled && vm.Capability.ChangeTrackingSupported != nil &&
				!*vm.Capability.ChangeTrackingSupported {
				return nil, fault(&types.NotSupported{},
					"Changed block tracking is not supported on this virtual machine (hardware version %s)", vm.Config.Version)
			}
			vm.Config.ChangeTrackingEnabled = types.NewBool(*spec.ChangeTrackingEnabled)
			for _, d := range st.disks {
				d.mu.Lock()
				if *spec.ChangeTrackingEnabled {
					d.cbt = newTracker(false)
					d.cbt.snapsAtEnable = len(st.snaps) > 0
					vm.writeCtk(d)
				} else {
					d.cbt = nil
					_ = os.Remove(vm.lab().localPath(vm.ctkPath(d)))
				}
				d.mu.Unlock()
			}
		}
		spec.ChangeTrackingEnabled = nil
		if spec.Crypto != nil {
			if f := vm.applyCrypto(spec.Crypto); f != nil { // crypto.go
				return nil, f
			}
			spec.Crypto = nil
		}
		if !isEmptySpec(&spec) {
			vm.flatForVcsim() // rdm.go
			res := vm.VirtualMachine.ReconfigVMTask(ctx, &types.ReconfigVM_Task{This: vm.Self, Spec: spec})
			tref := res.(*methods.ReconfigVM_TaskBody).Res.Returnval
			if t, ok := simulator.Map.Get(tref).(*simulator.Task); ok && t.Info.Error != nil {
				vm.syncConfig() // the mappings flatForVcsim hid
				return nil, &labFault{fault: t.Info.Error.Fault, msg: t.Info.Error.LocalizedMessage}
			}
		}
		vm.afterReconfigure()
		vm.syncConfig()
		return nil, nil
	})
	return &methods.ReconfigVM_TaskBody{Res: &types.ReconfigVM_TaskResponse{Returnval: ref}}
}

// editDiskMode applies an edit of a disk's mode (independent or not) or sharing (multi-writer
// or not), as vSphere allows it: only while the VM is powered off and has no snapshots (the
// disk is then one file, not a chain).  An edit that leaves both as they are changes nothing.
func (vm *VM) editDiskMode(d *Disk, disk *types.VirtualDisk) *labFault {
	b, ok := disk.Backing.(*types.VirtualDiskFlatVer2BackingInfo)
	if !ok {
		return nil
	}
	independent, multiWriter := d.Independent, d.MultiWriter
	if b.DiskMode != "" {
		independent = strings.HasPrefix(b.DiskMode, "independent")
	}
	if b.Sharing != "" {
		multiWriter = b.Sharing == sharing(true)
	}
	if independent == d.Independent && multiWriter == d.MultiWriter {
		return nil
	}
	if f := vm.offlineOnly(); f != nil {
		return f
	}
	d.mu.Lock()
	d.Independent, d.MultiWriter = independent, multiWriter
	d.mu.Unlock()
	return nil
}

// offlineOnly is the fault vSphere answers a change it makes only to a VM that is powered off
// and has no snapshots (a disk's mode or sharing, its encryption), or nil. Caller holds st.mu.
func (vm *VM) offlineOnly() *labFault {
	if vm.Runtime.PowerState != types.VirtualMachinePowerStatePoweredOff {
		return fault(&types.InvalidPowerState{RequestedState: types.VirtualMachinePowerStatePoweredOff,
			ExistingState: vm.Runtime.PowerState},
			"The attempted operation cannot be performed in the current state (Powered on).")
	}
	if len(vm.st.snaps) > 0 {
		return fault(&types.InvalidState{}, "The operation is not allowed in the current state: the virtual machine has snapshots")
	}
	return nil
}

func isEmptySpec(s *types.VirtualMachineConfigSpec) bool {
	empty := types.VirtualMachineConfigSpec{}
	return s.Name == empty.Name && len(s.DeviceChange) == 0 && s.Annotation == "" && len(s.ExtraConfig) == 0 &&
		s.NumCPUs == 0 && s.MemoryMB == 0 && s.GuestId == ""
}

func rewriteDescriptorSize(l *layer, capacity int64) {
	p := l.localPath()
	b, err := ioutil.ReadFile(p)
	if err != nil {
		return
	}
	lines := strings.Split(string(b), "\n")
	for i, line := range lines {
		if strings.HasPrefix(line, "RW ") {
			lines[i] = fmt.Sprintf("RW %d VMFS \"%s\"", (capacity+511)/512, filepath.Base(l.extentRel()))
		}
	}
	_ = ioutil.WriteFile(p, []byte(strings.Join(lines, "\n")), 0o600)
}
