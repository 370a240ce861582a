package main

// Storage vMotion of single disks (RelocateVM with spec.disk locators) and the datastores a VM
// uses. As vSphere: a locator names one of the VM's disks by device key and the datastore its
// files move to (all layers: a disk with snapshots moves whole, CBT is reset); an unknown key or
// datastore is InvalidArgument. A VM's `datastore` property lists every datastore holding its
// home or one of its disks, and each datastore's `vm` the VMs using it — so RemoveDatastore
// refuses (ResourceInUse) a datastore that still holds a disk attached to a VM, as vSphere does.
//
// Host access, as vSphere: a VM only uses datastores its host mounts. ReconfigVM adding a disk
// whose file is (or is to be created) on a datastore the VM's host does not mount, and
// RelocateVM leaving any of the VM's files on a datastore the destination host does not mount,
// answer InaccessibleDatastore and change nothing; so do CreateVM_Task and ImportVApp naming a
// host that does not mount the datastore of the new VM's files (server.go, before vcsim). What a host mounts is the datastore's `host`
// list (lab.go for the spec's datastores, nasds.go for NAS datastores mounted later).

import (
	"html"
	"os"
	"path/filepath"
	"regexp"
	"sort"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/types"
)

// mountedOn says whether the datastore called name is mounted on host.
func (lab *Lab) mountedOn(name string, host types.ManagedObjectReference) bool {
	lab.mu.Lock()
	ds := lab.datastores[name]
	lab.mu.Unlock()
	if ds == nil {
		return false
	}
	for _, m := range ds.Host {
		if m.Key == host {
			return true
		}
	}
	return false
}

// inaccessible is nil when host mounts datastore dsName, else the InaccessibleDatastore vSphere
// answers for the VM.
func (vm *VM) inaccessible(dsName string, host types.ManagedObjectReference) *labFault {
	lab := vm.lab()
	if lab.mountedOn(dsName, host) {
		return nil
	}
	name := lab.hostName(&host)
	f := &types.InaccessibleDatastore{InvalidDatastore: types.InvalidDatastore{Datastore: vm.dsRef(dsName), Name: dsName},
		Detail: "not mounted on host " + name}
	return fault(f, "The datastore '%s' is not accessible from host %s, which runs virtual machine %s", dsName, name, vm.Name)
}

// addedDiskDatastores checks the datastores of the disks a ReconfigVM spec adds: an existing
// file's or the one a new file is created on (its fileName's, else the backing's datastore,
// else the VM's home). Unknown datastores are left to the rest of ReconfigVM.
func (vm *VM) addedDiskDatastores(changes []types.BaseVirtualDeviceConfigSpec) *labFault {
	lab := vm.lab()
	if vm.Runtime.Host == nil {
		return nil
	}
	for _, dc := range changes {
		c := dc.GetVirtualDeviceConfigSpec()
		disk, ok := c.Device.(*types.VirtualDisk)
		if !ok || c.Operation != types.VirtualDeviceConfigSpecOperationAdd {
			continue
		}
		fb, ok := disk.Backing.(types.BaseVirtualDeviceFileBackingInfo)
		if !ok {
			continue
		}
		b := fb.GetVirtualDeviceFileBackingInfo()
		dsName, _ := splitDSPath(b.FileName)
		if dsName == "" && b.Datastore != nil {
			if ds, ok := simulator.Map.Get(*b.Datastore).(*simulator.Datastore); ok {
				dsName = ds.Name
			}
		}
		if dsName == "" {
			dsName, _ = splitDSPath(vm.Config.Files.VmPathName)
		}
		if lab.dsDirs[dsName] == "" {
			continue
		}
		if f := vm.inaccessible(dsName, *vm.Runtime.Host); f != nil {
			return f
		}
	}
	return nil
}

var fileDatastoreRe = regexp.MustCompile(`<(?:vmPathName|fileName)>\[([^\]]*)\]`)

// unmountedDatastore: for a CreateVM_Task or ImportVApp naming its host, the first datastore of
// the new VM's files (its vmPathName, its disks' fileNames) that host does not mount, with the
// host; nil when all are mounted (or no host is named: vCenter then picks one).
func (lab *Lab) unmountedDatastore(method string, body []byte) (*simulator.Datastore, *simulator.HostSystem) {
	host := lab.placedOn(method, body) // networks.go
	if host == nil {
		return nil, nil
	}
	for _, f := range fileDatastoreRe.FindAllSubmatch(body, -1) {
		name := html.UnescapeString(string(f[1]))
		lab.mu.Lock()
		ds := lab.datastores[name]
		lab.mu.Unlock()
		if ds != nil && !lab.mountedOn(name, host.Self) {
			return ds, host
		}
	}
	return nil, nil
}

// relocationDatastores checks that the host the VM runs on after spec (spec.host, else its
// own) mounts every datastore holding the VM's files afterwards: spec.datastore (else the
// home's), each disk locator's, and the datastores of the disks no locator moves.
func (vm *VM) relocationDatastores(spec *types.VirtualMachineRelocateSpec) *labFault {
	host := vm.Runtime.Host
	if spec.Host != nil {
		host = spec.Host
	}
	if host == nil {
		return nil
	}
	var names []string
	home := vm.st.dsName
	if spec.Datastore != nil {
		if ds, ok := simulator.Map.Get(*spec.Datastore).(*simulator.Datastore); ok {
			home = ds.Name
		}
	}
	names = append(names, home)
	moved := map[int32]bool{}
	for _, loc := range spec.Disk {
		if ds, ok := simulator.Map.Get(loc.Datastore).(*simulator.Datastore); ok {
			names = append(names, ds.Name)
			moved[loc.DiskId] = true
		}
	}
	for _, d := range vm.st.disks {
		if moved[d.Key] || spec.Datastore != nil { // spec.datastore: the rest go with the home
			continue
		}
		for _, l := range d.layers {
			names = append(names, l.ds)
		}
	}
	for _, n := range names {
		if vm.lab().dsDirs[n] == "" {
			continue
		}
		if f := vm.inaccessible(n, *host); f != nil {
			return f
		}
	}
	return nil
}

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
