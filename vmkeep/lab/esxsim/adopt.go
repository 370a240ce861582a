package main

// VMs created through the API (CreateVM_Task, RegisterVM_Task, CloneVM_Task — e.g. a restore)
// are adopted after the call: their disks get real VMFS-style files (a descriptor and a sparse
// flat extent of the disk's capacity, or the files already uploaded through /folder), so they
// behave like the lab's own VMs (snapshots, CBT, writes). DestroyTask forgets them again.

import (
	"fmt"
	"io/ioutil"
	"log"
	"math/rand"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
)

var adoptMethods = map[string]bool{"CreateVM_Task": true, "RegisterVM_Task": true, "CloneVM_Task": true,
	"CreateChildVM_Task": true, "ImportVApp": true}

func guestFamily(guestID string) string {
	id := strings.ToLower(guestID)
	switch {
	case strings.Contains(id, "win"):
		return "windows"
	case strings.Contains(id, "linux") || strings.Contains(id, "debian") || strings.Contains(id, "ubuntu") ||
		strings.Contains(id, "rhel") || strings.Contains(id, "centos") || strings.Contains(id, "sles"):
		return "linux"
	}
	return "other"
}

// adoptNewVMs wraps every plain simulator VM (created through the API) as a lab VM.
var adoptMu sync.Mutex

func (lab *Lab) adoptNewVMs() {
	adoptMu.Lock()
	defer adoptMu.Unlock()
	for _, e := range simulator.Map.All("VirtualMachine") {
		orig, ok := e.(*simulator.VirtualMachine)
		if !ok || orig.Config == nil {
			continue
		}
		if err := lab.adopt(orig); err != nil {
			log.Printf("adopt %s: %v", orig.Name, err)
		}
	}
}

func (lab *Lab) adopt(orig *simulator.VirtualMachine) error {
	normalizeMACs(orig) // macs.go: vCenter's override of a taken or out-of-range MAC
	ds, _ := splitDSPath(orig.Config.Files.VmPathName)
	if escaped := escapeName(orig.Name); escaped != orig.Name { // as vSphere stores names (rename.go)
		orig.Name, orig.Config.Name = escaped, escaped
		if orig.Summary.Config.Name != "" {
			orig.Summary.Config.Name = escaped
		}
	}
	vm := &VM{VirtualMachine: *orig}
	vm.st = &vmState{lab: lab, dsName: ds, snaps: map[string]*snapRec{}, nextPid: 1000,
		spec: VMSpec{Name: orig.Name, GuestID: orig.Config.GuestId, Guest: guestFamily(orig.Config.GuestId)}}
	for _, dev := range orig.Config.Hardware.Device {
		disk, ok := dev.(*types.VirtualDisk)
		if !ok {
			continue
		}
		b, compat, ok := flatView(disk.Backing) // rdm.go
		if !ok {
			return fmt.Errorf("disk %d: unsupported backing %T", disk.Key, disk.Backing)
		}
		dsName, rel := splitDSPath(b.FileName)
		dir := lab.dsDirs[dsName]
		if dir == "" {
			return fmt.Errorf("disk %d: unknown datastore %s", disk.Key, dsName)
		}
		capacity := disk.CapacityInBytes
		if capacity == 0 {
			capacity = disk.CapacityInKB * 1024
		}
		thin := b.ThinProvisioned != nil && *b.ThinProvisioned
		eager := b.EagerlyScrub != nil && *b.EagerlyScrub && !thin
		if err := ensureBaseFiles(filepath.Join(dir, rel), capacity, thin, eager); err != nil {
			return fmt.Errorf("disk %d: %v", disk.Key, err)
		}
		mode := rdmMode(b.FileName, compat) // rdm.go
		if err := mapLUN(filepath.Join(dir, rel), mode); err != nil {
			return fmt.Errorf("disk %d: %v", disk.Key, err)
		}
		base, err := openBaseLayer(dsName, dir, rel)
		if err != nil {
			return fmt.Errorf("disk %d: %v", disk.Key, err)
		}
		if fi, err := base.flat.Stat(); err == nil && capacity == 0 {
			capacity = fi.Size()
		}
		vm.st.disks = append(vm.st.disks, &Disk{Key: disk.Key, Capacity: capacity, Thin: thin,
			EagerZeroed: eager,
			Independent: strings.HasPrefix(b.DiskMode, "independent"), MultiWriter: b.Sharing == sharing(true),
			RDM: mode, KeyID: b.KeyId, UUID: diskUUID(b), layers: []*layer{base}})
	}
	if vm.Config.ChangeTrackingEnabled == nil {
		vm.Config.ChangeTrackingEnabled = types.NewBool(false)
	}
	if vm.cbtEnabled() {
		for _, d := range vm.st.disks {
			d.cbt = newTracker(true)
		}
	}
	setParentVApp(vm) // vapp.go
	simulator.Map.Put(vm)
	vm.st.mu.Lock()
	vm.syncConfig()
	vm.st.mu.Unlock()
	lab.vmsMu.Lock()
	lab.vms[vm.Name] = vm
	lab.vmOrder = append(lab.vmOrder, vm.Name)
	lab.vmsMu.Unlock()
	return nil
}

// labEagerKey marks an eagerly zeroed disk in its descriptor. ESX keeps how a disk was
// provisioned in VMFS's block metadata, not in the descriptor (which says only
// ddb.thinProvisioned); the lab has no VMFS, so this line stands in for it.
const labEagerKey = "ddb.labEagerlyScrub"

// ensureBaseFiles makes desc (NAME.vmdk) a VMFS descriptor with a NAME-flat.vmdk extent, thin
// or thick (eagerly zeroed with eager). Files uploaded through /folder are kept; empty
// placeholders (vcsim's) are replaced.
func ensureBaseFiles(desc string, capacity int64, thin, eager bool) error {
	flat := strings.TrimSuffix(desc, ".vmdk") + "-flat.vmdk"
	if b, err := ioutil.ReadFile(desc); err == nil && len(b) > 0 {
		if m := rdmExtentRe.FindSubmatch(b); m != nil { // a raw device mapping (rdm.go)
			flat = filepath.Join(filepath.Dir(desc), string(m[1]))
		} else if !strings.Contains(string(b), "-flat.vmdk\"") {
			return fmt.Errorf("%s: only flat (VMFS) extents are supported", desc)
		}
		if _, err := os.Stat(flat); err != nil {
			return err
		}
		return nil
	}
	if capacity <= 0 {
		return fmt.Errorf("%s: no capacity", desc)
	}
	if err := os.MkdirAll(filepath.Dir(desc), 0o755); err != nil {
		return err
	}
	f, err := os.OpenFile(flat, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return err
	}
	if fi, _ := f.Stat(); fi.Size() < capacity {
		err = f.Truncate(capacity)
	}
	f.Close()
	if err != nil {
		return err
	}
	t := 0
	if thin {
		t = 1
	}
	text := fmt.Sprintf(`# Disk DescriptorFile
version=1
encoding="UTF-8"
CID=%08x
parentCID=ffffffff
createType="vmfs"

# Extent description
RW %d VMFS "%s"

# The Disk Data Base
#DDB

ddb.adapterType = "lsilogic"
ddb.thinProvisioned = "%d"
ddb.virtualHWVersion = "14"
`, rand.Uint32()|1, (capacity+511)/512, filepath.Base(flat), t)
	if eager && !thin {
		text += labEagerKey + " = \"1\"\n"
	}
	return ioutil.WriteFile(desc, []byte(text), 0o600)
}

// fileProvisioning is how the disk whose descriptor is desc was provisioned, as ESX reports an
// existing disk whatever a ReconfigVM that attaches it claims: thin from ddb.thinProvisioned,
// eagerly zeroed from labEagerKey. ok is false when the descriptor cannot be read.
func fileProvisioning(desc string) (thin, eager, ok bool) {
	b, err := ioutil.ReadFile(desc)
	if err != nil {
		return false, false, false
	}
	for _, line := range strings.Split(string(b), "\n") {
		key, value, found := strings.Cut(line, "=")
		if !found {
			continue
		}
		on := strings.Trim(strings.TrimSpace(value), `"`) == "1"
		switch strings.TrimSpace(key) {
		case "ddb.thinProvisioned":
			thin = on
		case labEagerKey:
			eager = on
		}
	}
	return thin, eager && !thin, true
}

func (vm *VM) DestroyTask(ctx *simulator.Context, req *types.Destroy_Task) soap.HasFault {
	lab := vm.lab()
	if f := vm.importHoldFault(); f != nil { // nfc_import.go
		ref := startTask(vm, vm.Name, "destroy", false, func() (types.AnyType, *labFault) { return nil, f })
		return &methods.Destroy_TaskBody{Res: &types.Destroy_TaskResponse{Returnval: ref}}
	}
	vm.st.mu.Lock()
	snaps := vm.orderedSnaps()
	for i := len(snaps) - 1; i >= 0; i-- {
		if f := vm.removeSnapshot(snaps[i].ref); f != nil {
			vm.st.mu.Unlock()
			ref := startTask(vm, vm.Name, "destroy", false, func() (types.AnyType, *labFault) { return nil, f })
			return &methods.Destroy_TaskBody{Res: &types.Destroy_TaskResponse{Returnval: ref}}
		}
	}
	for _, d := range vm.st.disks {
		for _, l := range d.layers {
			l.close()
		}
		if d.cbt != nil {
			_ = os.Remove(lab.localPath(vm.ctkPath(d)))
		}
	}
	own := vm.ownFiles()
	vm.flatForVcsim() // rdm.go
	vm.st.mu.Unlock()
	// vcsim deletes the VM's whole log directory (its home folder), other VMs' files in it too;
	// vSphere deletes the VM's own files and the folder only once it is empty (destroy.go).
	logDir := vm.Config.Files.LogDirectory
	vm.Config.Files.LogDirectory = ""
	res := vm.VirtualMachine.DestroyTask(ctx, req)
	if simulator.Map.Get(vm.Self) != nil { // not destroyed (e.g. powered on): nothing changes
		vm.Config.Files.LogDirectory = logDir
		vm.st.mu.Lock()
		vm.syncConfig() // the mappings flatForVcsim hid
		vm.st.mu.Unlock()
		return res
	}
	lab.forget(vm)
	lab.detachTags(vm.Self.Value) // tagging.go
	removeOwnFiles(own, lab.localPath(vm.Config.Files.VmPathName))
	return res
}

// forget drops a destroyed or unregistered VM from the lab's tables (only if they still name it:
// a VM renamed aside and a new one of its old name may both have been there).
func (lab *Lab) forget(vm *VM) {
	lab.vmsMu.Lock()
	defer lab.vmsMu.Unlock()
	for name, v := range lab.vms {
		if v == vm {
			delete(lab.vms, name)
			lab.rebind(name, vm)
		}
	}
	lab.reorder("", "")
}

// diskUUID is the disk's backing uuid, assigned when the creating or attaching spec gave none:
// ESX gives every virtual disk one (the descriptor's ddb.uuid, reported as backing.uuid) —
// Linux movers name hot-added disks by it (/dev/disk/by-id/scsi-3<uuid>).
func diskUUID(b *types.VirtualDiskFlatVer2BackingInfo) string {
	if b.Uuid == "" {
		r := rand.Uint64()
		s := rand.Uint64()
		b.Uuid = fmt.Sprintf("6000c29%01x-%04x-%04x-%04x-%012x", r>>60, (r>>44)&0xffff,
			(r>>28)&0xffff, (r>>12)&0xffff, s&0xffffffffffff)
	}
	return b.Uuid
}
