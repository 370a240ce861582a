package main

// Datastore free space, as vSphere reports it in Datastore.summary.
//
// Every datastore reports a capacity of 500 GiB and 400 GiB free unless a `ds_full` fault
// rule targets it: then its summary.freeSpace is the rule's `bytes` for as long as the rule
// stands (count 0), and the default again when it is cleared.  Like ESXi, the lab refuses a
// snapshot whose delta disks (on each snapshotted disk's datastore) or .vmsn (the VM's home
// datastore) would land on a datastore with less than snapshotMinFree bytes left: NoDiskSpace,
// "Insufficient disk space on datastore".  A datastore that fills up while a snapshot exists
// is not simulated (ESXi would pause the VM with a question).

import (
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/types"
)

const (
	defaultDatastoreCapacity = int64(500) << 30
	defaultDatastoreFree     = int64(400) << 30
	// below this, creating a delta disk or a .vmsn fails
	snapshotMinFree = int64(64) << 20
)

// datastoreFree is the free space the datastore named `name` reports now.
func (lab *Lab) datastoreFree(name string) int64 {
	free := defaultDatastoreFree
	for _, r := range lab.faults.list() {
		if r.Kind == "ds_full" && r.Target == name {
			free = r.Bytes // the newest rule wins
		}
	}
	return free
}

// applyDatastoreSpace sets every datastore's summary from the standing ds_full rules (called
// when rules are added or cleared).
func (lab *Lab) applyDatastoreSpace() {
	for _, e := range simulator.Map.All("Datastore") {
		ds := e.(*simulator.Datastore)
		if inDC2[ds.Self] {
			continue // its own free space (otherdc.go)
		}
		free := lab.datastoreFree(ds.Name)
		simulator.Map.WithLock(ds, func() {
			ds.Info.GetDatastoreInfo().FreeSpace = free
			simulator.Map.Update(ds, []types.PropertyChange{
				{Name: "summary.capacity", Val: defaultDatastoreCapacity},
				{Name: "summary.freeSpace", Val: free},
			})
		})
	}
}

// snapshotSpaceFault is the NoDiskSpace fault a snapshot of vm meets, or nil.
func (vm *VM) snapshotSpaceFault() *labFault {
	lab := vm.lab()
	names := []string{vm.st.dsName}
	for _, d := range vm.st.disks {
		d.mu.Lock()
		if d.inSnapshots() {
			names = append(names, d.top().ds)
		}
		d.mu.Unlock()
	}
	for _, name := range names {
		if lab.datastoreFree(name) < snapshotMinFree {
			return fault(&types.NoDiskSpace{Datastore: name},
				"An error occurred while saving the snapshot: Insufficient disk space on datastore '%s'.", name)
		}
	}
	return nil
}
