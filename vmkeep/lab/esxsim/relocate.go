package main

// vMotion: RelocateVM to another host moves the VM in the inventory and keeps CBT; to another
// datastore moves its files (home and disks, snapshots included) and resets CBT as ESX does.

import (
	"fmt"
	"reflect"

	"github.com/vmware/govmomi/vim25/mo"
	"os"
	"path/filepath"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
)

func removeRef(refs []types.ManagedObjectReference, ref types.ManagedObjectReference) []types.ManagedObjectReference {
	var out []types.ManagedObjectReference
	for _, r := range refs {
		if r != ref {
			out = append(out, r)
		}
	}
	return out
}

func (vm *VM) RelocateVMTask(ctx *simulator.Context, req *types.RelocateVM_Task) soap.HasFault {
	lab := vm.lab()
	ref := startTask(vm, vm.Name, "relocateVm", false, func() (types.AnyType, *labFault) {
		if f := vm.hostConnected(); f != nil {
			return nil, f
		}
		spec := req.Spec
		if spec.Host != nil && lab.hostDown(*spec.Host) {
			return nil, fault(&types.HostNotConnected{}, "The destination host is not connected")
		}
		vm.st.mu.Lock()
		defer vm.st.mu.Unlock()
		if f := vm.relocationDatastores(&spec); f != nil { // diskmove.go
			return nil, f
		}
		if spec.Datastore != nil {
			ds, ok := simulator.Map.Get(*spec.Datastore).(*simulator.Datastore)
			if !ok {
				return nil, fault(&types.InvalidArgument{InvalidProperty: "spec.datastore"}, "A specified parameter was not correct: spec.datastore")
			}
			if ds.Name != vm.st.dsName {
				if f := vm.moveStorage(ds); f != nil {
					return nil, f
				}
			}
		}
		for _, loc := range spec.Disk { // storage vMotion of single disks (diskmove.go)
			if f := vm.relocateDisk(loc); f != nil {
				return nil, f
			}
		}
		if spec.Host != nil && *spec.Host != *vm.Runtime.Host {
			newHost, ok := simulator.Map.Get(*spec.Host).(*simulator.HostSystem)
			if !ok {
				return nil, fault(&types.InvalidArgument{InvalidProperty: "spec.host"}, "A specified parameter was not correct: spec.host")
			}
			if old, ok := simulator.Map.Get(*vm.Runtime.Host).(*simulator.HostSystem); ok {
				old.Vm = removeRef(old.Vm, vm.Self)
			}
			newHost.Vm = append(newHost.Vm, vm.Self)
			h := newHost.Self
			vm.Runtime.Host = &h
			vm.Summary.Runtime.Host = &h
			changes := []types.PropertyChange{
				{Name: "runtime.host", Val: &h},
				{Name: "summary.runtime.host", Val: &h},
			}
			pool := spec.Pool
			if pool == nil {
				if cr, ok := simulator.Map.Get(*newHost.Parent).(*simulator.ClusterComputeResource); ok {
					pool = cr.ResourcePool
				} else if cr, ok := asComputeResource(simulator.Map.Get(*newHost.Parent)); ok {
					pool = cr.ResourcePool
				}
			}
			if pool != nil && (vm.ResourcePool == nil || *pool != *vm.ResourcePool) {
				if old, ok := simulator.Map.Get(*vm.ResourcePool).(*simulator.ResourcePool); ok {
					old.Vm = removeRef(old.Vm, vm.Self)
				}
				if np, ok := simulator.Map.Get(*pool).(*simulator.ResourcePool); ok {
					np.Vm = append(np.Vm, vm.Self)
				}
				p := *pool
				vm.ResourcePool = &p
				changes = append(changes, types.PropertyChange{Name: "resourcePool", Val: &p})
			}
			simulator.Map.Update(&vm.VirtualMachine, changes)
		}
		vm.syncConfig()
		vm.refreshDatastores()
		return nil, nil
	})
	return &methods.RelocateVM_TaskBody{Res: &types.RelocateVM_TaskResponse{Returnval: ref}}
}

// moveStorage moves every file of the VM to ds and resets CBT. Caller holds st.mu.
func (vm *VM) moveStorage(ds *simulator.Datastore) *labFault {
	lab := vm.lab()
	newDir := lab.dsDirs[ds.Name]
	oldHome := filepath.Dir(lab.localPath(vm.Config.Files.VmPathName))
	rel := filepath.Base(oldHome)
	newHome := filepath.Join(newDir, rel)
	if err := os.MkdirAll(newHome, 0o755); err != nil {
		return fault(&types.FileFault{File: newHome}, "%v", err)
	}
	moved := map[string]bool{}
	for _, d := range vm.st.disks {
		files, f := vm.moveDisk(d, ds)
		if f != nil {
			return f
		}
		for _, m := range files {
			moved[m] = true
		}
	}
	// Move the rest of the VM home (vmx, vmsn, logs).
	entries, _ := os.ReadDir(oldHome)
	for _, e := range entries {
		f := filepath.Join(oldHome, e.Name())
		if moved[f] {
			continue
		}
		_ = moveOrCopy(f, filepath.Join(newHome, e.Name()))
	}
	_ = os.Remove(oldHome)
	oldDS := vm.st.dsName
	vm.st.dsName = ds.Name
	vmx := fmt.Sprintf("[%s] %s/%s", ds.Name, rel, filepath.Base(vm.Config.Files.VmPathName))
	files := vm.Config.Files
	files.VmPathName = vmx
	dir := fmt.Sprintf("[%s] %s/", ds.Name, rel)
	files.SnapshotDirectory, files.SuspendDirectory, files.LogDirectory = dir, dir, dir
	vm.Config.Files = files
	vm.Summary.Config.VmPathName = vmx
	if old := lab.datastores[oldDS]; old != nil {
		old.Vm = removeRef(old.Vm, vm.Self)
	}
	ds.Vm = append(ds.Vm, vm.Self)
	simulator.Map.Update(&vm.VirtualMachine, []types.PropertyChange{
		{Name: "datastore", Val: []types.ManagedObjectReference{ds.Self}},
		{Name: "config.files", Val: files},
		{Name: "summary.config.vmPathName", Val: vmx},
	})
	return nil
}

func asComputeResource(obj interface{}) (*mo.ComputeResource, bool) {
	v := reflect.ValueOf(obj)
	for v.Kind() == reflect.Ptr || v.Kind() == reflect.Interface {
		if v.IsNil() {
			return nil, false
		}
		v = v.Elem()
	}
	for v.Kind() == reflect.Struct {
		if cr, ok := v.Addr().Interface().(*mo.ComputeResource); ok {
			return cr, true
		}
		if v.NumField() == 0 {
			break
		}
		v = v.Field(0)
	}
	return nil, false
}
