package main

// Datastores of the same names in the second datacenter (spec "dc2_datastores").
//
// vSphere keeps datastore names unique per datacenter only ("The scope of a datastore is a
// datacenter; the datastore is uniquely named within the datacenter", the Datastore object's
// API reference): every datacenter's standalone ESXi hosts may bring a local "datastore1".  With dc2_datastores, DC2 (strict.go) gets a standalone
// host, esx21.lab.local, mounting one datastore per entry, with the entry's name (usually one
// DC1 has), type and free space.  They hold no VMs and serve no files (/folder's dcPath is
// DC1's only); the lab's by-name tables, fault rules (ds_full) and VMFS details stay DC1's.
// So a VM created, registered or imported into DC2's folders is refused (NotSupported): its
// files would land in DC1's directory of the datastore's name.
//
// With dc2_first, DC2 comes before the Region folder in the root folder's childEntity, so a
// container view lists its datastores first: vCenter's inventory order is not the order of
// creation, and a client that takes the first datastore of a name anywhere finds DC2's.

import (
	"context"
	"fmt"
	"html"
	"net/http"
	"os"

	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"
)

const dc2HostName = "esx21.lab.local"

// DC2DatastoreSpec is one datastore of the second datacenter.
type DC2DatastoreSpec struct {
	Name string `json:"name"`
	Dir  string `json:"dir"`
	Type string `json:"type,omitempty"` // VMFS (default) | NFS | …: summary.type only
	Free int64  `json:"free,omitempty"` // summary.freeSpace (default: as DC1's datastores)
}

// inDC2 holds the datastores populateDC2 made (set while building, read-only afterwards).
var inDC2 = map[types.ManagedObjectReference]bool{}

// populateDC2 adds DC2's host and datastores (nothing without dc2_datastores).
func (lab *Lab) populateDC2(ctx context.Context, dc2 *object.Datacenter) error {
	if len(lab.spec.DC2Datastores) == 0 {
		return nil
	}
	folders, err := dc2.Folders(ctx)
	if err != nil {
		return err
	}
	task, err := folders.HostFolder.AddStandaloneHost(ctx, types.HostConnectSpec{
		HostName: dc2HostName, UserName: "root", Password: "lab"}, true, nil, nil)
	if err != nil {
		return err
	}
	info, err := task.WaitForResult(ctx, nil)
	if err != nil {
		return fmt.Errorf("host %s: %v", dc2HostName, err)
	}
	host := object.NewHostSystem(lab.client, info.Result.(types.ManagedObjectReference))
	dss, err := host.ConfigManager().DatastoreSystem(ctx)
	if err != nil {
		return err
	}
	for _, s := range lab.spec.DC2Datastores {
		if err := os.MkdirAll(s.Dir, 0o755); err != nil {
			return err
		}
		made, err := dss.CreateLocalDatastore(ctx, s.Name, s.Dir)
		if err != nil {
			return fmt.Errorf("datastore %s in %s: %v", s.Name, strictDC2Name, err)
		}
		ds := simulator.Map.Get(made.Reference()).(*simulator.Datastore)
		ds.Summary.Type = s.Type
		if ds.Summary.Type == "" {
			ds.Summary.Type = "VMFS"
		}
		ds.Summary.Capacity = defaultDatastoreCapacity
		ds.Summary.FreeSpace = defaultDatastoreFree
		if s.Free > 0 {
			ds.Summary.FreeSpace = s.Free
		}
		ds.Info.GetDatastoreInfo().FreeSpace = ds.Summary.FreeSpace
		inDC2[ds.Self] = true
	}
	if lab.spec.DC2First {
		root := simulator.Map.Get(lab.client.ServiceContent.RootFolder).(*simulator.Folder)
		kids := root.ChildEntity
		for i, k := range kids {
			if k == dc2.Reference() {
				root.ChildEntity = append([]types.ManagedObjectReference{k},
					append(append([]types.ManagedObjectReference{}, kids[:i]...), kids[i+1:]...)...)
				break
			}
		}
	}
	return nil
}

// refuseVMsInDC2 answers a CreateVM_Task, RegisterVM_Task or ImportVApp into a folder of DC2
// with NotSupported (see the file comment); true if it did.
func refuseVMsInDC2(w http.ResponseWriter, method string, body []byte) bool {
	if len(inDC2) == 0 {
		return false
	}
	var folderM [][]byte
	switch method {
	case "CreateVM_Task", "RegisterVM_Task":
		folderM = thisFolderRe.FindSubmatch(body)
	case "ImportVApp":
		folderM = importFolderRe.FindSubmatch(body)
	default:
		return false
	}
	if folderM == nil {
		return false
	}
	folder := types.ManagedObjectReference{Type: "Folder", Value: html.UnescapeString(string(folderM[1]))}
	if !inDatacenter(folder, strictDC2Name) {
		return false
	}
	f := fault(&types.NotSupported{}, "The ESX lab's %s holds no VMs: its datastores serve no files.", strictDC2Name)
	if method == "ImportVApp" {
		writeSoapFault(w, f.msg, "NotSupported", "")
		return true
	}
	failedTask(w, method, folder, "", f)
	return true
}

// inDatacenter: whether ref is below the datacenter called name.
func inDatacenter(ref types.ManagedObjectReference, name string) bool {
	for i := 0; i < 64; i++ {
		e, ok := simulator.Map.Get(ref).(mo.Entity)
		if !ok {
			return false
		}
		if dc, isDC := e.(*simulator.Datacenter); isDC {
			return dc.Name == name
		}
		parent := e.Entity().Parent
		if parent == nil {
			return false
		}
		ref = *parent
	}
	return false
}
