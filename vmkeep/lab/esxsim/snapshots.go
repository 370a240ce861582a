package main

// ESX-like snapshots: CreateSnapshot freezes each disk's current top layer and starts a
// VMFS-sparse delta (NAME-000001.vmdk); the snapshot's config points at the frozen files;
// RemoveSnapshot consolidates the child delta into the frozen layer. Independent disks are
// not snapshotted. Quiesced snapshots record freeze/thaw events and can be made to fail.

import (
	"fmt"
	"io/ioutil"
	"path"
	"path/filepath"
	"sync"
	"time"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
)

// Snapshot wraps simulator.VirtualMachineSnapshot.
type Snapshot struct {
	simulator.VirtualMachineSnapshot
	vm *VM
}

const maxSnapshotDepth = 32

func (vm *VM) hostConnected() *labFault {
	if vm.Runtime.Host != nil && vm.lab().hostDown(*vm.Runtime.Host) {
		return fault(&types.HostNotConnected{}, "The host of virtual machine %s is not connected", vm.Name)
	}
	return nil
}

func (vm *VM) CreateSnapshotTask(req *types.CreateSnapshot_Task) soap.HasFault {
	lab := vm.lab()
	if f := vm.busyFault(); f != nil {
		return &methods.CreateSnapshot_TaskBody{Res: &types.CreateSnapshot_TaskResponse{
			Returnval: startTask(vm, vm.Name, "createSnapshot", false, failWith(f))}}
	}
	async := req.Quiesce && lab.faults.peek("quiesce_timeout", vm.Name) != nil
	ref := startTask(vm, vm.Name, "createSnapshot", async, func() (types.AnyType, *labFault) {
		if f := vm.hostConnected(); f != nil {
			return nil, f
		}
		if r := lab.faults.take("snapshot_create", vm.Name); r != nil {
			return nil, fault(&types.SnapshotFault{}, "An error occurred while taking a snapshot: %s", r.msg("Injected fault"))
		}
		if vm.Config.Template {
			return nil, fault(&types.NotSupported{}, "The operation is not supported on the object.")
		}
		if d := vm.sharedDependentDisk(); d != nil { // VMware KB 1034165: no snapshots with multi-writer disks
			return nil, fault(&types.NotSupported{},
				"An error occurred while taking a snapshot: The operation is not supported on the object (disk %d is shared multi-writer).", d.Key)
		}
		if held := lab.heldForWriting(vm); held != "" { // hotadd.go
			return nil, fault(&types.FileLocked{FileFault: types.FileFault{File: held}},
				"An error occurred while taking a snapshot: Failed to lock the file %s", held)
		}
		if f := vm.snapshotSpaceFault(); f != nil { // dsspace.go
			return nil, f
		}
		quiesced := false
		if req.Quiesce && vm.Runtime.PowerState == types.VirtualMachinePowerStatePoweredOn {
			if f := vm.quiesce(req.Name); f != nil {
				return nil, f
			}
			quiesced = true
		}
		vm.st.mu.Lock()
		defer vm.st.mu.Unlock()
		if len(vm.orderedSnaps()) >= maxSnapshotDepth {
			return nil, fault(&types.TooManySnapshotLevels{}, "Exceeded the maximum number of permitted snapshots.")
		}
		return vm.createSnapshot(req, quiesced)
	})
	return &methods.CreateSnapshot_TaskBody{Res: &types.CreateSnapshot_TaskResponse{Returnval: ref}}
}

// sharedDependentDisk is a multi-writer disk a snapshot would have to hold (not independent).
func (vm *VM) sharedDependentDisk() *Disk {
	for _, d := range vm.st.disks {
		if d.MultiWriter && d.inSnapshots() {
			return d
		}
	}
	return nil
}

func (vm *VM) quiesce(name string) *labFault {
	lab := vm.lab()
	pre, post := "/usr/sbin/pre-freeze-script", "/usr/sbin/post-thaw-script"
	if vm.st.spec.Guest == "windows" {
		pre, post = `C:\Windows\pre-freeze-script.bat`, `C:\Windows\post-thaw-script.bat`
	}
	vm.st.mu.Lock()
	vm.st.quiesces = append(vm.st.quiesces, quiesceEvent{Snapshot: name, Event: "freeze", Script: pre, OK: true})
	vm.st.mu.Unlock()
	if r := lab.faults.take("quiesce_timeout", vm.Name); r != nil {
		time.Sleep(time.Duration(r.Delay * float64(time.Second)))
		vm.recordQuiesce(name, "timeout", pre, false)
		return fault(&types.ApplicationQuiesceFault{},
			"Cannot create a quiesced snapshot because the create snapshot operation exceeded the time limit for holding off I/O in the frozen virtual machine.")
	}
	if r := lab.faults.take("quiesce_fail", vm.Name); r != nil {
		vm.recordQuiesce(name, "fail", pre, false)
		return fault(&types.ApplicationQuiesceFault{},
			"An error occurred while saving the snapshot: Failed to quiesce the virtual machine. %s", r.msg(""))
	}
	vm.recordQuiesce(name, "thaw", post, true)
	return nil
}

func (vm *VM) recordQuiesce(snap, event, script string, ok bool) {
	vm.st.mu.Lock()
	vm.st.quiesces = append(vm.st.quiesces, quiesceEvent{Snapshot: snap, Event: event, Script: script, OK: ok})
	vm.st.mu.Unlock()
}

func (vm *VM) createSnapshot(req *types.CreateSnapshot_Task, quiesced bool) (types.AnyType, *labFault) {
	st := vm.st
	rec := &snapRec{name: req.Name, frozen: map[int32]*layer{}, epoch: map[int32]int{},
		changeID: map[int32]string{}, cbtUUID: map[int32]string{}}
	for _, d := range st.disks {
		d.mu.Lock()
		if !d.inSnapshots() { // independent disks and pRDMs (rdm.go)
			d.mu.Unlock()
			continue
		}
		rec.frozen[d.Key] = d.top()
		if d.cbt != nil && vm.cbtEnabled() {
			rec.changeID[d.Key] = d.cbt.snapshot()
			rec.epoch[d.Key] = d.cbt.epoch
			rec.cbtUUID[d.Key] = d.cbt.uuid
		}
		_, err := d.pushDelta()
		d.mu.Unlock()
		if err != nil {
			return nil, fault(&types.FileFault{}, "cannot create delta disk: %v", err)
		}
	}
	snap := &Snapshot{vm: vm}
	snap.Self.Type = "VirtualMachineSnapshot"
	snap.Vm = vm.Self
	snap.Config = *vm.Config
	snap.Config.Hardware.Device = append([]types.BaseVirtualDevice(nil), vm.Config.Hardware.Device...)
	simulator.Map.Put(snap)
	rec.ref = snap.Self
	rec.obj = snap
	st.snapSeq++
	rec.vmsn = path.Join(path.Dir(vm.homeRel()), fmt.Sprintf("%s-Snapshot%d.vmsn", vm.Name, st.snapSeq))
	_ = ioutil.WriteFile(vm.lab().localPath(fmt.Sprintf("[%s] %s", st.dsName, rec.vmsn)),
		[]byte(fmt.Sprintf("vmkeep lab snapshot %s\n", req.Name)), 0o600)
	st.snaps[snap.Self.Value] = rec

	item := types.VirtualMachineSnapshotTree{
		Snapshot: snap.Self, Vm: vm.Self, Name: req.Name, Description: req.Description,
		Id: int32(st.snapSeq), CreateTime: time.Now(), State: vm.Runtime.PowerState,
		Quiesced: quiesced, ReplaySupported: types.NewBool(false),
	}
	info := &types.VirtualMachineSnapshotInfo{}
	if vm.Snapshot != nil {
		info.RootSnapshotList = vm.Snapshot.RootSnapshotList
		info.CurrentSnapshot = vm.Snapshot.CurrentSnapshot
	}
	if info.CurrentSnapshot == nil {
		info.RootSnapshotList = append(info.RootSnapshotList, item)
	} else {
		parent := findTree(info.RootSnapshotList, *info.CurrentSnapshot)
		parent.ChildSnapshotList = append(parent.ChildSnapshotList, item)
		if p := st.snaps[info.CurrentSnapshot.Value]; p != nil {
			p.obj.ChildSnapshot = append(p.obj.ChildSnapshot, snap.Self)
		}
	}
	ref := snap.Self
	info.CurrentSnapshot = &ref
	vm.Snapshot = info
	vm.syncConfig()
	simulator.Map.Update(&vm.VirtualMachine, []types.PropertyChange{
		{Name: "snapshot", Val: info},
		{Name: "rootSnapshot", Val: rootRefs(info.RootSnapshotList)},
	})
	return snap.Self, nil
}

func (vm *VM) homeRel() string {
	var p struct{ ds, rel string }
	p.ds, p.rel = splitDSPath(vm.Config.Files.VmPathName)
	return p.rel
}

func rootRefs(tree []types.VirtualMachineSnapshotTree) []types.ManagedObjectReference {
	var out []types.ManagedObjectReference
	for _, t := range tree {
		out = append(out, t.Snapshot)
	}
	return out
}

func findTree(tree []types.VirtualMachineSnapshotTree, ref types.ManagedObjectReference) *types.VirtualMachineSnapshotTree {
	for i := range tree {
		if tree[i].Snapshot == ref {
			return &tree[i]
		}
		if t := findTree(tree[i].ChildSnapshotList, ref); t != nil {
			return t
		}
	}
	return nil
}

// removeFromTree removes ref, promoting its children; returns the new tree and ref's parent.
func removeFromTree(tree []types.VirtualMachineSnapshotTree, ref types.ManagedObjectReference, parent *types.ManagedObjectReference) ([]types.VirtualMachineSnapshotTree, *types.ManagedObjectReference, bool) {
	for i := range tree {
		if tree[i].Snapshot == ref {
			out := append([]types.VirtualMachineSnapshotTree{}, tree[:i]...)
			out = append(out, tree[i].ChildSnapshotList...)
			out = append(out, tree[i+1:]...)
			return out, parent, true
		}
		p := tree[i].Snapshot
		if sub, pp, ok := removeFromTree(tree[i].ChildSnapshotList, ref, &p); ok {
			tree[i].ChildSnapshotList = sub
			return tree, pp, true
		}
	}
	return tree, nil, false
}

func descendants(t *types.VirtualMachineSnapshotTree) []types.ManagedObjectReference {
	var out []types.ManagedObjectReference
	for i := range t.ChildSnapshotList {
		out = append(out, descendants(&t.ChildSnapshotList[i])...)
		out = append(out, t.ChildSnapshotList[i].Snapshot)
	}
	return out
}

// removeSnapshot consolidates and forgets one snapshot. Caller holds st.mu.
func (vm *VM) removeSnapshot(ref types.ManagedObjectReference) *labFault {
	st := vm.st
	rec := st.snaps[ref.Value]
	if rec == nil {
		return fault(&types.ManagedObjectNotFound{Obj: ref}, "The object has already been deleted or has not been completely created")
	}
	if f := vm.hotaddHolds(rec); f != nil {
		return f
	}
	for _, d := range st.disks {
		l := rec.frozen[d.Key]
		if l == nil {
			continue
		}
		d.mu.Lock()
		idx := d.layerIndex(l)
		if idx >= 0 && idx+1 < len(d.layers) {
			child := d.layers[idx+1]
			if err := d.consolidate(idx); err != nil {
				d.mu.Unlock()
				return fault(&types.FileFault{File: l.dsPath()}, "An error occurred while consolidating disks: %v", err)
			}
			for _, other := range st.snaps {
				if other.frozen[d.Key] == child {
					other.frozen[d.Key] = l
				}
			}
		}
		d.mu.Unlock()
	}
	tree, parent, _ := removeFromTree(vm.Snapshot.RootSnapshotList, ref, nil)
	info := &types.VirtualMachineSnapshotInfo{RootSnapshotList: tree, CurrentSnapshot: vm.Snapshot.CurrentSnapshot}
	if info.CurrentSnapshot != nil && *info.CurrentSnapshot == ref {
		info.CurrentSnapshot = parent
	}
	if parent != nil {
		if p := st.snaps[parent.Value]; p != nil {
			var kids []types.ManagedObjectReference
			for _, k := range p.obj.ChildSnapshot {
				if k != ref {
					kids = append(kids, k)
				}
			}
			kids = append(kids, rec.obj.ChildSnapshot...)
			p.obj.ChildSnapshot = kids
		}
	}
	delete(st.snaps, ref.Value)
	_ = removeFile(vm.lab().localPath(fmt.Sprintf("[%s] %s", st.dsName, rec.vmsn)))
	simulator.Map.Remove(ref)
	if len(tree) == 0 {
		vm.Snapshot = nil
	} else {
		vm.Snapshot = info
	}
	vm.syncConfig()
	var val interface{}
	if vm.Snapshot != nil {
		val = vm.Snapshot
	}
	simulator.Map.Update(&vm.VirtualMachine, []types.PropertyChange{
		{Name: "snapshot", Val: val},
		{Name: "rootSnapshot", Val: rootRefs(tree)},
	})
	return nil
}

// Snapshot operations on one VM run one at a time, as on ESX: another one while a removal
// (or consolidation) runs fails with TaskInProgress. Removals are quick in the lab unless the
// remove_slow fault (delay seconds) makes one take that long — as consolidating a large delta
// does on a real host, for hours.
var vmBusy = struct {
	sync.Mutex
	tasks map[string]types.ManagedObjectReference // VM moref value -> its running task
}{tasks: map[string]types.ManagedObjectReference{}}

func (vm *VM) busyFault() *labFault {
	vmBusy.Lock()
	defer vmBusy.Unlock()
	if t, ok := vmBusy.tasks[vm.Self.Value]; ok {
		return fault(&types.TaskInProgress{Task: t}, "Another task is already in progress.")
	}
	return nil
}

// setBusy marks the VM busy with task (its reference may still be empty), or free (nil).
func (vm *VM) setBusy(task *types.ManagedObjectReference) {
	vmBusy.Lock()
	defer vmBusy.Unlock()
	if task == nil {
		delete(vmBusy.tasks, vm.Self.Value)
	} else {
		vmBusy.tasks[vm.Self.Value] = *task
	}
}

// nameBusyTask fills in the running task's reference, unless the VM is free again already.
func (vm *VM) nameBusyTask(task types.ManagedObjectReference) {
	vmBusy.Lock()
	defer vmBusy.Unlock()
	if _, ok := vmBusy.tasks[vm.Self.Value]; ok {
		vmBusy.tasks[vm.Self.Value] = task
	}
}

func (s *Snapshot) RemoveSnapshotTask(req *types.RemoveSnapshot_Task) soap.HasFault {
	vm := s.vm
	lab := vm.lab()
	if f := vm.busyFault(); f != nil {
		return &methods.RemoveSnapshot_TaskBody{Res: &types.RemoveSnapshot_TaskResponse{
			Returnval: startTask(vm, vm.Name, "removeSnapshot", false, failWith(f))}}
	}
	slow := lab.faults.take("remove_slow", vm.Name)
	if slow != nil {
		// before the task exists: no second operation slips in
		vm.setBusy(&types.ManagedObjectReference{Type: "Task"})
	}
	ref := startTask(vm, vm.Name, "removeSnapshot", slow != nil, func() (types.AnyType, *labFault) {
		if slow != nil {
			defer vm.setBusy(nil)
			time.Sleep(time.Duration(slow.Delay * float64(time.Second)))
		}
		if f := vm.hostConnected(); f != nil {
			return nil, f
		}
		if r := lab.faults.take("remove_snapshot", vm.Name); r != nil {
			return nil, fault(&types.FileLocked{FileFault: types.FileFault{File: vm.Config.Files.VmPathName}},
				"An error occurred while consolidating disks: Failed to lock the file. %s", r.msg(""))
		}
		vm.st.mu.Lock()
		defer vm.st.mu.Unlock()
		var refs []types.ManagedObjectReference
		if req.RemoveChildren && vm.Snapshot != nil {
			if t := findTree(vm.Snapshot.RootSnapshotList, s.Self); t != nil {
				refs = descendants(t)
			}
		}
		refs = append(refs, s.Self)
		for _, r := range refs {
			if f := vm.removeSnapshot(r); f != nil {
				return nil, f
			}
		}
		return nil, nil
	})
	if slow != nil {
		vm.nameBusyTask(ref)
	}
	return &methods.RemoveSnapshot_TaskBody{Res: &types.RemoveSnapshot_TaskResponse{Returnval: ref}}
}

func (vm *VM) RemoveAllSnapshotsTask(req *types.RemoveAllSnapshots_Task) soap.HasFault {
	if f := vm.busyFault(); f != nil {
		return &methods.RemoveAllSnapshots_TaskBody{Res: &types.RemoveAllSnapshots_TaskResponse{
			Returnval: startTask(vm, vm.Name, "removeAllSnapshots", false, failWith(f))}}
	}
	ref := startTask(vm, vm.Name, "removeAllSnapshots", false, func() (types.AnyType, *labFault) {
		if f := vm.hostConnected(); f != nil {
			return nil, f
		}
		vm.st.mu.Lock()
		defer vm.st.mu.Unlock()
		snaps := vm.orderedSnaps()
		for i := len(snaps) - 1; i >= 0; i-- {
			if f := vm.removeSnapshot(snaps[i].ref); f != nil {
				return nil, f
			}
		}
		return nil, nil
	})
	return &methods.RemoveAllSnapshots_TaskBody{Res: &types.RemoveAllSnapshots_TaskResponse{Returnval: ref}}
}

func (s *Snapshot) RevertToSnapshotTask(req *types.RevertToSnapshot_Task) soap.HasFault {
	ref := startTask(s.vm, s.vm.Name, "revertToSnapshot", false, func() (types.AnyType, *labFault) {
		return nil, fault(&types.NotSupported{}, "vmkeep lab: reverting snapshots is not supported")
	})
	return &methods.RevertToSnapshot_TaskBody{Res: &types.RevertToSnapshot_TaskResponse{Returnval: ref}}
}

func (vm *VM) RevertToCurrentSnapshotTask(req *types.RevertToCurrentSnapshot_Task) soap.HasFault {
	ref := startTask(vm, vm.Name, "revertToCurrentSnapshot", false, func() (types.AnyType, *labFault) {
		return nil, fault(&types.NotSupported{}, "vmkeep lab: reverting snapshots is not supported")
	})
	return &methods.RevertToCurrentSnapshot_TaskBody{Res: &types.RevertToCurrentSnapshot_TaskResponse{Returnval: ref}}
}

func removeFile(p string) error { return osRemove(filepath.Clean(p)) }
