package main

// VM wraps simulator.VirtualMachine (embedded by value, as the property collector requires)
// with real disks, ESX-like snapshots, CBT and file-moving vMotion.

import (
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/types"
)

type VM struct {
	simulator.VirtualMachine
	st *vmState
}

type vmState struct {
	mu       sync.Mutex
	lab      *Lab
	spec     VMSpec
	dsName   string // datastore holding the VM home
	disks    []*Disk
	snaps    map[string]*snapRec
	snapSeq  int
	procs    []*guestProc
	nextPid  int64
	quiesces []quiesceEvent
}

type snapRec struct {
	ref      types.ManagedObjectReference
	name     string
	frozen   map[int32]*layer
	epoch    map[int32]int
	changeID map[int32]string
	cbtUUID  map[int32]string
	vmsn     string // datastore-relative
	obj      *Snapshot
}

type quiesceEvent struct {
	Snapshot string `json:"snapshot"`
	Event    string `json:"event"`
	Script   string `json:"script"`
	OK       bool   `json:"ok"`
}

func (vm *VM) lab() *Lab { return vm.st.lab }

func (vm *VM) disk(key int32) *Disk {
	for _, d := range vm.st.disks {
		if d.Key == key {
			return d
		}
	}
	return nil
}

func (vm *VM) cbtEnabled() bool {
	return vm.Config.ChangeTrackingEnabled != nil && *vm.Config.ChangeTrackingEnabled
}

func (vm *VM) dsRef(name string) *types.ManagedObjectReference {
	if ds := vm.lab().datastores[name]; ds != nil {
		ref := ds.Self
		return &ref
	}
	return nil
}

// backing builds the backing chain for layers[0..upto] of d.
func (vm *VM) backing(d *Disk, upto int, changeID string) types.BaseVirtualDeviceBackingInfo {
	var b *types.VirtualDiskFlatVer2BackingInfo
	mode := string(types.VirtualDiskModePersistent)
	if d.Independent {
		mode = string(types.VirtualDiskModeIndependent_persistent)
	}
	if d.RDM != "" {
		return vm.rdmBacking(d, upto, mode, changeID) // rdm.go
	}
	for i := 0; i <= upto; i++ {
		l := d.layers[i]
		nb := &types.VirtualDiskFlatVer2BackingInfo{
			VirtualDeviceFileBackingInfo: types.VirtualDeviceFileBackingInfo{
				FileName: l.dsPath(), Datastore: vm.dsRef(l.ds),
			},
			DiskMode:        mode,
			Split:           types.NewBool(false),
			WriteThrough:    types.NewBool(false),
			ThinProvisioned: types.NewBool(d.Thin),
			EagerlyScrub:    types.NewBool(d.EagerZeroed && !d.Thin),
			DigestEnabled:   types.NewBool(false),
			Uuid:            d.UUID,
			ContentId:       fmt.Sprintf("%08x%024x", l.cid, 0),
			Parent:          b,
			Sharing:         sharing(d.MultiWriter),
			KeyId:           d.KeyID, // crypto.go
		}
		if l.delta != nil {
			setDeltaBacking(nb, l)
		}
		b = nb
	}
	b.ChangeId = changeID
	return b
}

// sharing is a disk's backing.sharing.
func sharing(multiWriter bool) string {
	if multiWriter {
		return string(types.VirtualDiskSharingSharingMultiWriter)
	}
	return string(types.VirtualDiskSharingSharingNone)
}

// devicesWith copies the device list, replacing each disk's backing via f.
func devicesWith(devs []types.BaseVirtualDevice, f func(*types.VirtualDisk) *types.VirtualDisk) []types.BaseVirtualDevice {
	out := make([]types.BaseVirtualDevice, 0, len(devs))
	for _, dev := range devs {
		if disk, ok := dev.(*types.VirtualDisk); ok {
			if nd := f(disk); nd != nil {
				out = append(out, nd)
				continue
			}
		}
		out = append(out, dev)
	}
	return out
}

// syncConfig rewrites the VM's and its snapshots' disk backings from the disk layers.
// Caller holds st.mu.
func (vm *VM) syncConfig() {
	devs := devicesWith(vm.Config.Hardware.Device, func(disk *types.VirtualDisk) *types.VirtualDisk {
		d := vm.disk(disk.Key)
		if d == nil {
			return nil
		}
		nd := *disk
		cid := ""
		if d.cbt != nil && vm.cbtEnabled() {
			cid = d.cbt.changeID()
		}
		nd.Backing = vm.backing(d, len(d.layers)-1, cid)
		nd.CapacityInBytes = d.Capacity
		nd.CapacityInKB = d.Capacity / 1024
		return &nd
	})
	vsphereLabels(devs) // labels.go
	vm.Config.Hardware.Device = devs
	for _, rec := range vm.st.snaps {
		if rec.obj == nil {
			continue
		}
		cfg := rec.obj.Config
		cfg.Hardware.Device = devicesWith(cfg.Hardware.Device, func(disk *types.VirtualDisk) *types.VirtualDisk {
			d := vm.disk(disk.Key)
			if d == nil {
				return nil
			}
			l := rec.frozen[disk.Key]
			idx := d.layerIndex(l)
			if idx < 0 {
				idx = len(d.layers) - 1
			}
			nd := *disk
			nd.Backing = vm.backing(d, idx, rec.changeID[disk.Key])
			return &nd
		})
		rec.obj.Config = cfg
	}
	vm.refreshLayout()
	simulator.Map.Update(&vm.VirtualMachine, []types.PropertyChange{
		{Name: "config.hardware.device", Val: devs},
	})
}

// allocated returns the bytes a (possibly sparse) file occupies.
func allocated(p string) int64 {
	var st syscall.Stat_t
	if err := syscall.Stat(p, &st); err != nil {
		return 0
	}
	return st.Blocks * 512
}

func fileSize(p string) int64 {
	if fi, err := os.Stat(p); err == nil {
		return fi.Size()
	}
	return 0
}

// refreshLayout regenerates layout and layoutEx (files, disks chains, snapshots) like ESX.
func (vm *VM) refreshLayout() {
	lab := vm.lab()
	var files []types.VirtualMachineFileLayoutExFileInfo
	add := func(dsPath, kind string, local string) int32 {
		key := int32(len(files))
		files = append(files, types.VirtualMachineFileLayoutExFileInfo{
			Key: key, Name: dsPath, Type: kind, Size: fileSize(local), UniqueSize: fileSize(local),
			Accessible: types.NewBool(true),
		})
		return key
	}
	vmxLocal := lab.localPath(vm.Config.Files.VmPathName)
	add(vm.Config.Files.VmPathName, string(types.VirtualMachineFileLayoutExFileTypeConfig), vmxLocal)
	layerKeys := map[*layer][]int32{}
	var disksEx []types.VirtualMachineFileLayoutExDiskLayout
	var disks []types.VirtualMachineFileLayoutDiskLayout
	for _, d := range vm.st.disks {
		ex := types.VirtualMachineFileLayoutExDiskLayout{Key: d.Key}
		dl := types.VirtualMachineFileLayoutDiskLayout{Key: d.Key}
		for _, l := range d.layers {
			k1 := add(l.dsPath(), string(types.VirtualMachineFileLayoutExFileTypeDiskDescriptor), l.localPath())
			keys := []int32{k1}
			if l.object == "" { // vSAN / vVol objects are no datastore files (vsan.go)
				ext := fmt.Sprintf("[%s] %s", l.ds, l.extentRel())
				keys = append(keys, add(ext, string(types.VirtualMachineFileLayoutExFileTypeDiskExtent), filepath.Join(l.dsDir, l.extentRel())))
			}
			layerKeys[l] = keys
			ex.Chain = append(ex.Chain, types.VirtualMachineFileLayoutExDiskUnit{FileKey: keys})
			dl.DiskFile = append(dl.DiskFile, l.dsPath())
		}
		disksEx = append(disksEx, ex)
		disks = append(disks, dl)
	}
	var snapsEx []types.VirtualMachineFileLayoutExSnapshotLayout
	var snaps []types.VirtualMachineFileLayoutSnapshotLayout
	for _, rec := range vm.orderedSnaps() {
		vmsn := fmt.Sprintf("[%s] %s", vm.st.dsName, rec.vmsn)
		k := add(vmsn, string(types.VirtualMachineFileLayoutExFileTypeSnapshotData), lab.localPath(vmsn))
		sx := types.VirtualMachineFileLayoutExSnapshotLayout{Key: rec.ref, DataKey: k, MemoryKey: -1}
		sl := types.VirtualMachineFileLayoutSnapshotLayout{Key: rec.ref, SnapshotFile: []string{vmsn}}
		for _, d := range vm.st.disks {
			idx := d.layerIndex(rec.frozen[d.Key])
			if idx < 0 {
				idx = len(d.layers) - 1
			}
			dx := types.VirtualMachineFileLayoutExDiskLayout{Key: d.Key}
			for i := 0; i <= idx; i++ {
				dx.Chain = append(dx.Chain, types.VirtualMachineFileLayoutExDiskUnit{FileKey: layerKeys[d.layers[i]]})
				sl.SnapshotFile = append(sl.SnapshotFile, d.layers[i].dsPath())
			}
			sx.Disk = append(sx.Disk, dx)
		}
		snapsEx = append(snapsEx, sx)
		snaps = append(snaps, sl)
	}
	vm.LayoutEx = &types.VirtualMachineFileLayoutEx{File: files, Disk: disksEx, Snapshot: snapsEx, Timestamp: time.Now()}
	var committed, capacity int64
	for _, f := range files {
		committed += allocated(lab.localPath(f.Name))
	}
	for _, d := range vm.st.disks {
		capacity += d.Capacity
	}
	uncommitted := capacity - committed
	if uncommitted < 0 {
		uncommitted = 0
	}
	vm.Summary.Storage = &types.VirtualMachineStorageSummary{Committed: committed, Uncommitted: uncommitted,
		Unshared: committed, Timestamp: time.Now()}
	vm.Layout = &types.VirtualMachineFileLayout{
		ConfigFile: []string{vm.Config.Files.VmPathName}, Disk: disks, Snapshot: snaps,
	}
}

func (vm *VM) orderedSnaps() []*snapRec {
	var out []*snapRec
	var walk func(tree []types.VirtualMachineSnapshotTree)
	walk = func(tree []types.VirtualMachineSnapshotTree) {
		for _, t := range tree {
			if rec := vm.st.snaps[t.Snapshot.Value]; rec != nil {
				out = append(out, rec)
			}
			walk(t.ChildSnapshotList)
		}
	}
	if vm.Snapshot != nil {
		walk(vm.Snapshot.RootSnapshotList)
	}
	return out
}
