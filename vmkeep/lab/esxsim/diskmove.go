package main

// Storage vMotion of single disks (RelocateVM with spec.disk locators) and the datastores a VM
// uses. As vSphere: a locator names one of the VM's disks by device key and the datastore its
// files move to (all layers: a disk with snapshots moves whole, CBT is reset); an unknown key or
// datastore is InvalidArgument. A VM's `datastore` property lists every datastore holding its
// home or one of its disks, and each datastore's `vm` the VMs using it — so RemoveDatastore
// refuses (ResourceInUse) a datastore that still holds a disk attached to a VM, as vSphere does.

import (
	"os"
	"path/filepath"
	"sort"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/types"
)

// moveDisk moves every layer of d (descriptor and extent) to ds, keeping each layer's path in
// the datastore, and resets CBT; returns the source files moved. Caller holds st.mu.
func (vm *VM) moveDisk(d *Disk, ds *simulator.Datastore) ([]string, *labFault) {
	lab := vm.lab()
	newDir := lab.dsDirs[ds.Name]
	var moved []string
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, l := range d.layers {
		from := []string{l.localPath(), filepath.Join(l.dsDir, l.extentRel())}
		if err := os.MkdirAll(filepath.Join(newDir, filepath.Dir(l.rel)), 0o755); err != nil {
			return moved, fault(&types.FileFault{File: newDir}, "%v", err)
		}
		var copied []string
		for _, f := range from {
			r, _ := filepath.Rel(l.dsDir, f)
			c, err := moveFile(f, filepath.Join(newDir, r)) // nasds.go: copies off NAS mounts
			if c {
				copied = append(copied, f)
			}
			if err != nil {
				return moved, fault(&types.FileFault{File: f}, "cannot move %s: %v", f, err)
			}
			moved = append(moved, f)
		}
		if l == d.layers[0] {
			os.Remove(lab.localPath(vm.ctkPath(d)))
		}
		l.ds, l.dsDir = ds.Name, newDir
		if len(copied) > 0 {
			if err := reopenFlat(l); err != nil {
				return moved, fault(&types.FileFault{File: l.rel}, "%v", err)
			}
			for _, f := range copied {
				_ = os.Remove(f)
			}
		}
	}
	vm.resetCBT(d)
	return moved, nil
}

// relocateDisk carries out one spec.disk locator. Caller holds st.mu.
func (vm *VM) relocateDisk(loc types.VirtualMachineRelocateSpecDiskLocator) *labFault {
	d := vm.disk(loc.DiskId)
	if d == nil {
		return fault(&types.InvalidArgument{InvalidProperty: "spec.disk.diskId"},
			"A specified parameter was not correct: spec.disk.diskId")
	}
	ds, ok := simulator.Map.Get(loc.Datastore).(*simulator.Datastore)
	if !ok || vm.lab().dsDirs[ds.Name] == "" {
		return fault(&types.InvalidArgument{InvalidProperty: "spec.disk.datastore"},
			"A specified parameter was not correct: spec.disk.datastore")
	}
	if d.layers[0].ds == ds.Name {
		return nil
	}
	_, f := vm.moveDisk(d, ds)
	return f
}

// refreshDatastores makes the VM's `datastore` property and the datastores' `vm` lists say
// where its home and disks are. Caller holds st.mu.
func (vm *VM) refreshDatastores() {
	lab := vm.lab()
	used := map[string]bool{vm.st.dsName: true}
	if home, _ := splitDSPath(vm.Config.Files.VmPathName); home != "" {
		used[home] = true
	}
	for _, d := range vm.st.disks {
		for _, l := range d.layers {
			used[l.ds] = true
		}
	}
	var refs []types.ManagedObjectReference
	names := make([]string, 0, len(lab.datastores))
	for name := range lab.datastores {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		ds := lab.datastores[name]
		has := false
		for _, r := range ds.Vm {
			if r == vm.Self {
				has = true
			}
		}
		switch {
		case used[name] && !has:
			ds.Vm = append(ds.Vm, vm.Self)
		case !used[name] && has:
			ds.Vm = removeRef(ds.Vm, vm.Self)
		}
		if used[name] {
			refs = append(refs, ds.Self)
		}
	}
	simulator.Map.Update(&vm.VirtualMachine, []types.PropertyChange{{Name: "datastore", Val: refs}})
}
