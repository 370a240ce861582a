package main

// VMs in a vApp, as vSphere shows them.  A VM created in a vApp (CreateChildVM_Task, or
// CreateVM_Task / ImportVApp with the vApp as its pool) has no `parent`: vSphere leaves the
// property unset and sets `parentVApp` instead, and the VM folder lists the root vApp in its
// childEntity, not the vApp's VMs (a client that walks `parent` up from such a VM finds no
// folder and no datacenter).  Stock vcsim kept the VM in the folder, with `parent` set.
//
// The simulator keeps its internal parent (its own code walks it); what clients read is made
// vSphere's here: RetrieveProperties(Ex) and Fetch answer without `parent` for such VMs, and a
// folder's childEntity without them and with its root vApps.

import (
	"reflect"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/types"
)

// vAppOf is the vApp whose VM ref is, if it is one.
func vAppOf(ref types.ManagedObjectReference) (types.ManagedObjectReference, bool) {
	if ref.Type != "VirtualMachine" {
		return types.ManagedObjectReference{}, false
	}
	var pool *types.ManagedObjectReference
	switch vm := simulator.Map.Get(ref).(type) {
	case *VM:
		pool = vm.ResourcePool
	case *simulator.VirtualMachine:
		pool = vm.ResourcePool
	}
	if pool == nil || pool.Type != "VirtualApp" {
		return types.ManagedObjectReference{}, false
	}
	return *pool, true
}

// setParentVApp records a new VM's vApp in parentVApp (adopt.go calls it).
func setParentVApp(vm *VM) {
	if vm.ResourcePool != nil && vm.ResourcePool.Type == "VirtualApp" {
		app := *vm.ResourcePool
		vm.ParentVApp = &app
	}
}

// rootVAppsIn: the vApps whose parentFolder is folder.
func rootVAppsIn(folder types.ManagedObjectReference) []types.ManagedObjectReference {
	var out []types.ManagedObjectReference
	for _, e := range simulator.Map.All("VirtualApp") {
		if app, ok := e.(*simulator.VirtualApp); ok && app.ParentFolder != nil && *app.ParentFolder == folder {
			out = append(out, app.Self)
		}
	}
	return out
}

// asVSphereShows rewrites property results as vSphere answers them (see the file comment).
func asVSphereShows(objects []types.ObjectContent) []types.ObjectContent {
	for i := range objects {
		oc := &objects[i]
		switch oc.Obj.Type {
		case "VirtualMachine":
			if _, ok := vAppOf(oc.Obj); !ok {
				continue
			}
			kept := oc.PropSet[:0:0]
			for _, p := range oc.PropSet {
				if p.Name != "parent" {
					kept = append(kept, p)
				}
			}
			oc.PropSet = kept
		case "Folder":
			for j, p := range oc.PropSet {
				if p.Name != "childEntity" {
					continue
				}
				var refs []types.ManagedObjectReference
				switch v := p.Val.(type) { // the collector answers a pointer, Fetch a value
				case *types.ArrayOfManagedObjectReference:
					refs = v.ManagedObjectReference
				case types.ArrayOfManagedObjectReference:
					refs = v.ManagedObjectReference
				default:
					continue
				}
				var children []types.ManagedObjectReference
				for _, c := range refs {
					if _, inApp := vAppOf(c); !inApp {
						children = append(children, c)
					}
				}
				children = append(children, rootVAppsIn(oc.Obj)...)
				oc.PropSet[j].Val = &types.ArrayOfManagedObjectReference{ManagedObjectReference: children}
			}
		}
	}
	return objects
}

// fetchAsVSphere answers a Fetch of a vApp VM's parent (unset) or of a folder's childEntity
// as vSphere does; ok is false for every other Fetch (the simulator answers it).
func fetchAsVSphere(req interface{}) (val types.AnyType, ok bool) {
	v := reflect.ValueOf(req).Elem()
	this, isRef := v.FieldByName("This").Interface().(types.ManagedObjectReference)
	if !isRef {
		return nil, false
	}
	prop, _ := v.FieldByName("Prop").Interface().(string)
	if _, inApp := vAppOf(this); inApp && prop == "parent" {
		return nil, true
	}
	if folder, isFolder := simulator.Map.Get(this).(*simulator.Folder); isFolder && prop == "childEntity" {
		oc := []types.ObjectContent{{Obj: this, PropSet: []types.DynamicProperty{{Name: prop,
			Val: types.ArrayOfManagedObjectReference{ManagedObjectReference: folder.ChildEntity}}}}}
		val := asVSphereShows(oc)[0].PropSet[0].Val.(*types.ArrayOfManagedObjectReference)
		return *val, true
	}
	return nil, false
}
