package main

// Hot-add: data-mover VMs (spec "mover": true, e.g. vmkeep-mover01) to which ReconfigVM attaches
// another VM's snapshot disk, as backup products do (VDDK "hotadd").
//
// What vSphere does and the lab checks:
//   - attach = a VirtualDisk device "add" without fileOperation whose backing fileName is an
//     existing disk file: the snapshot's frozen disk (the file its config names). Frozen files
//     are held read-only by the running VM, so only diskMode independent_nonpersistent (writes
//     go to a throw-away redo log on the mover) is accepted; persistent modes answer FileLocked,
//     as does the running VM's current (active) file in any mode;
//   - the mover's host must mount the disk's datastore, else InaccessibleDatastore;
//   - a unit number already used on the controller answers InvalidDeviceSpec;
//   - detach = "remove" without fileOperation; "destroy" of an attached foreign disk answers
//     FileLocked (the file belongs to the other VM, whose lock stands);
//   - while a frozen file is attached, RemoveSnapshot of the VM owning it fails with FileLocked
//     (consolidation cannot take the lock): a backup must detach before it releases.
//   - writable attach (diskMode persistent or independent_persistent, for restores in place):
//     only the current disk of a powered-off VM (FileLocked otherwise; the lab refuses a snapshot
//     delta as NotSupported); the mover's device writes through to the disk file itself, past
//     the owner's CBT, and while it is attached the owner neither powers on nor takes snapshots
//     (FileLocked).
//
// The mover's "operating system": every attached disk appears read-only as
// <device dir>/scsi-3<disk uuid, 32 lowercase hex> (what /dev/disk/by-id shows on a Linux mover
// with disk.EnableUUID), holding the frozen disk's logical content (the delta chain up to the
// frozen file resolved); it is a sparse copy made at attach time (frozen content cannot change
// while it is attached) and is removed at detach. The device dir is in the ready document
// ("movers"). ExtraConfig set in a mover's ReconfigVM follows vSphere (a key replaces its old
// value; an empty value deletes the key).

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/types"
)

// ReadyMover is a data-mover VM in the ready document.
type ReadyMover struct {
	Name      string `json:"name"`
	Moref     string `json:"moref"`
	BiosUUID  string `json:"bios_uuid"`
	Host      string `json:"host"`
	DeviceDir string `json:"device_dir"`
}

type hotDisk struct {
	key     int32
	src     *VM
	disk    *Disk
	layer   *layer
	devPath string
	// attached persistent (a powered-off VM's current disk, for a restore in place): the
	// device writes through to the file, and the VM cannot power on or take snapshots
	writable bool
}

// heldForWriting is the disk file of vm a mover holds writable, or "" (vSphere: the VM's own
// host cannot lock it, so the VM does not power on and takes no snapshot).
func (lab *Lab) heldForWriting(vm *VM) string {
	if h := lab.findHotAdded(func(h *hotDisk) bool { return h.writable && h.src == vm }); h != nil {
		return h.layer.dsPath()
	}
	return ""
}

type moverState struct {
	devDir   string
	attached map[int32]*hotDisk // device key on the mover
}

var hotadd = struct {
	sync.Mutex
	movers map[string]*moverState // mover VM moref value
}{movers: map[string]*moverState{}}

func (lab *Lab) registerMover(vm *VM) error {
	dir := filepath.Join(lab.spec.StateDir, "movers", vm.Name, "dev", "disk", "by-id")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	hotadd.Lock()
	hotadd.movers[vm.Self.Value] = &moverState{devDir: dir, attached: map[int32]*hotDisk{}}
	hotadd.Unlock()
	// disks report their UUID to the guest: what gives Linux its /dev/disk/by-id/scsi-3… names
	vm.st.mu.Lock()
	vm.mergeExtraConfig([]types.BaseOptionValue{&types.OptionValue{Key: "disk.EnableUUID", Value: "TRUE"}})
	vm.st.mu.Unlock()
	return nil
}

func (lab *Lab) moverDocs() []ReadyMover {
	var out []ReadyMover
	for _, vm := range lab.vmList() {
		hotadd.Lock()
		m := hotadd.movers[vm.Self.Value]
		hotadd.Unlock()
		if m != nil {
			out = append(out, ReadyMover{Name: vm.Name, Moref: vm.Self.Value, BiosUUID: vm.Config.Uuid,
				Host: lab.hostName(vm.Runtime.Host), DeviceDir: m.devDir})
		}
	}
	return out
}

// dsVisible says whether the datastore spec is mounted on host (no list: on every host).
func dsVisible(ds DatastoreSpec, host string) bool {
	if len(ds.Hosts) == 0 {
		return true
	}
	for _, h := range ds.Hosts {
		if h == host {
			return true
		}
	}
	return false
}

func (lab *Lab) dsSpec(name string) (DatastoreSpec, bool) {
	for _, ds := range lab.spec.Datastores {
		if ds.Name == name {
			return ds, true
		}
	}
	return DatastoreSpec{}, false
}

// byIDName is the /dev/disk/by-id name of a disk with this UUID.
func byIDName(uuid string) string {
	return "scsi-3" + strings.ToLower(strings.ReplaceAll(strings.ReplaceAll(uuid, "-", ""), " ", ""))
}

// hotaddReconfig handles a mover's attach/detach device changes and extraConfig, removing them
// from spec (the rest goes on as before). Caller holds vm.st.mu.
func (vm *VM) hotaddReconfig(spec *types.VirtualMachineConfigSpec) *labFault {
	hotadd.Lock()
	m := hotadd.movers[vm.Self.Value]
	hotadd.Unlock()
	if m == nil {
		return nil
	}
	var rest []types.BaseVirtualDeviceConfigSpec
	for i, dc := range spec.DeviceChange {
		c := dc.GetVirtualDeviceConfigSpec()
		disk, ok := c.Device.(*types.VirtualDisk)
		switch {
		case ok && c.Operation == types.VirtualDeviceConfigSpecOperationAdd && c.FileOperation == "":
			if f := vm.attach(m, disk, int32(i)); f != nil {
				return f
			}
		case c.Operation == types.VirtualDeviceConfigSpecOperationRemove && m.attached[c.Device.GetVirtualDevice().Key] != nil:
			if c.FileOperation == types.VirtualDeviceConfigSpecFileOperationDestroy {
				h := m.attached[c.Device.GetVirtualDevice().Key]
				return fault(&types.FileLocked{FileFault: types.FileFault{File: h.layer.dsPath()}},
					"Failed to delete the file %s: it is locked by virtual machine %s", h.layer.dsPath(), h.src.Name)
			}
			vm.detach(m, c.Device.GetVirtualDevice().Key)
		default:
			rest = append(rest, dc)
		}
	}
	spec.DeviceChange = rest
	if len(spec.ExtraConfig) > 0 {
		vm.mergeExtraConfig(spec.ExtraConfig)
		spec.ExtraConfig = nil
	}
	return nil
}

// findLayer finds the VM, disk and layer whose descriptor is dsPath.
func (lab *Lab) findLayer(dsPath string) (*VM, *Disk, *layer) {
	for _, other := range lab.vmList() {
		for _, d := range other.st.disks {
			d.mu.Lock()
			for _, l := range d.layers {
				if l.dsPath() == dsPath {
					d.mu.Unlock()
					return other, d, l
				}
			}
			d.mu.Unlock()
		}
	}
	return nil, nil, nil
}

func (vm *VM) attach(m *moverState, disk *types.VirtualDisk, index int32) *labFault {
	lab := vm.lab()
	backing, ok := disk.Backing.(*types.VirtualDiskFlatVer2BackingInfo)
	if !ok || backing.FileName == "" {
		return fault(&types.InvalidDeviceSpec{InvalidVmConfig: types.InvalidVmConfig{Property: "virtualDeviceSpec.device.backing"},
			DeviceIndex: index}, "Invalid configuration for device '%d': a disk added without fileOperation needs a file backing", index)
	}
	name := backing.FileName
	src, d, l := lab.findLayer(name)
	if src == nil {
		return fault(&types.FileNotFound{FileFault: types.FileFault{File: name}}, "File %s was not found", name)
	}
	if src == vm {
		return fault(&types.NotSupported{}, "vmkeep lab: a mover cannot hot-add its own disk")
	}
	if d.encrypted() && !vm.vmEncrypted() { // crypto.go: the host decrypts only for an encrypted VM
		return fault(&types.InvalidDeviceSpec{InvalidVmConfig: types.InvalidVmConfig{Property: "virtualDeviceSpec.device.backing"},
			DeviceIndex: index}, "Invalid configuration for device '%d': the encrypted disk %s cannot be attached to %s, which is not encrypted", index, name, vm.Name)
	}
	dsName, _ := splitDSPath(name)
	if vm.Runtime.Host != nil {
		if f := vm.inaccessible(dsName, *vm.Runtime.Host); f != nil { // diskmove.go
			return f
		}
	}
	src.st.mu.Lock()
	defer src.st.mu.Unlock()
	d.mu.Lock()
	defer d.mu.Unlock()
	idx := d.layerIndex(l)
	active := idx == len(d.layers)-1 && src.Runtime.PowerState == types.VirtualMachinePowerStatePoweredOn
	locked := fault(&types.FileLocked{FileFault: types.FileFault{File: name}},
		"Failed to lock the file %s: it is in use by virtual machine %s", name, src.Name)
	writable := backing.DiskMode == string(types.VirtualDiskModePersistent) ||
		backing.DiskMode == string(types.VirtualDiskModeIndependent_persistent)
	switch {
	case writable:
		// a powered-off VM's current disk, written through the mover (restores in place); a
		// frozen layer of a chain is read-only to everyone (its child depends on it)
		if src.Runtime.PowerState != types.VirtualMachinePowerStatePoweredOff || idx != len(d.layers)-1 {
			return locked
		}
		if l.delta != nil || l.flat == nil {
			return fault(&types.NotSupported{}, "vmkeep lab: writable hot-add of a snapshot delta")
		}
	case active || backing.DiskMode != string(types.VirtualDiskModeIndependent_nonpersistent):
		return locked
	}
	if lab.hotAdded(l) {
		return locked
	}
	// the controller and unit
	var ctrl types.BaseVirtualController
	for _, dev := range vm.Config.Hardware.Device {
		if dev.GetVirtualDevice().Key == disk.ControllerKey {
			ctrl, _ = dev.(types.BaseVirtualController)
		}
	}
	if ctrl == nil || disk.UnitNumber == nil || *disk.UnitNumber == 7 {
		return fault(&types.InvalidDeviceSpec{InvalidVmConfig: types.InvalidVmConfig{Property: "virtualDeviceSpec.device.controllerKey"},
			DeviceIndex: index}, "Invalid configuration for device '%d': controller %d / unit number", index, disk.ControllerKey)
	}
	maxKey := int32(2000)
	for _, dev := range vm.Config.Hardware.Device {
		v := dev.GetVirtualDevice()
		if v.ControllerKey == disk.ControllerKey && v.UnitNumber != nil && *v.UnitNumber == *disk.UnitNumber {
			return fault(&types.InvalidDeviceSpec{InvalidVmConfig: types.InvalidVmConfig{Property: "virtualDeviceSpec.device.unitNumber"},
				DeviceIndex: index}, "Invalid configuration for device '%d': unit number %d is in use", index, *disk.UnitNumber)
		}
		if v.Key > maxKey {
			maxKey = v.Key
		}
	}
	devPath := filepath.Join(m.devDir, byIDName(d.UUID))
	if _, err := os.Stat(devPath); err == nil {
		return locked
	}
	if writable { // the guest's block device writes through to the disk file itself
		if err := os.Symlink(l.flat.Name(), devPath); err != nil {
			return fault(&types.FileFault{File: name}, "cannot open disk %s: %v", name, err)
		}
	} else if err := materialize(d, idx, devPath); err != nil {
		return fault(&types.FileFault{File: name}, "cannot open disk %s: %v", name, err)
	}
	unit := *disk.UnitNumber
	nd := &types.VirtualDisk{
		VirtualDevice: types.VirtualDevice{
			Key: maxKey + 1, ControllerKey: disk.ControllerKey, UnitNumber: &unit,
			DeviceInfo: &types.Description{Label: fmt.Sprintf("Hard disk %d", maxKey+2-2000), Summary: fmt.Sprintf("%d KB", d.Capacity/1024)},
			Backing: &types.VirtualDiskFlatVer2BackingInfo{
				VirtualDeviceFileBackingInfo: types.VirtualDeviceFileBackingInfo{FileName: name, Datastore: vm.dsRef(dsName)},
				DiskMode:                     backing.DiskMode, ThinProvisioned: types.NewBool(d.Thin), Uuid: d.UUID,
				Sharing: "sharingNone", ContentId: fmt.Sprintf("%08x%024x", l.cid, 0),
			},
		},
		CapacityInKB: d.Capacity / 1024, CapacityInBytes: d.Capacity,
	}
	vm.Config.Hardware.Device = append(vm.Config.Hardware.Device, nd)
	ctrl.GetVirtualController().Device = append(ctrl.GetVirtualController().Device, nd.Key)
	hotadd.Lock()
	m.attached[nd.Key] = &hotDisk{key: nd.Key, src: src, disk: d, layer: l, devPath: devPath, writable: writable}
	hotadd.Unlock()
	simulator.Map.Update(&vm.VirtualMachine, []types.PropertyChange{{Name: "config.hardware.device", Val: vm.Config.Hardware.Device}})
	return nil
}

// materialize writes the chain layers[0..upto] of d as a sparse read-only file.
func materialize(d *Disk, upto int, p string) error {
	tmp := p + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	defer os.Remove(tmp)
	if err := f.Truncate(d.Capacity); err != nil {
		f.Close()
		return err
	}
	buf := make([]byte, 1<<20)
	for off := int64(0); off < d.Capacity; off += int64(len(buf)) {
		n := int64(len(buf))
		if off+n > d.Capacity {
			n = d.Capacity - off
		}
		if err := d.readAt(buf[:n], off, upto); err != nil {
			f.Close()
			return err
		}
		if allZero(buf[:n]) {
			continue
		}
		if _, err := f.WriteAt(buf[:n], off); err != nil {
			f.Close()
			return err
		}
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Chmod(tmp, 0o444); err != nil {
		return err
	}
	return os.Rename(tmp, p)
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

func (vm *VM) detach(m *moverState, key int32) {
	hotadd.Lock()
	h := m.attached[key]
	delete(m.attached, key)
	hotadd.Unlock()
	_ = os.Remove(h.devPath)
	var devs []types.BaseVirtualDevice
	for _, dev := range vm.Config.Hardware.Device {
		if dev.GetVirtualDevice().Key == key {
			continue
		}
		if c, ok := dev.(types.BaseVirtualController); ok {
			vc := c.GetVirtualController()
			var keep []int32
			for _, k := range vc.Device {
				if k != key {
					keep = append(keep, k)
				}
			}
			vc.Device = keep
		}
		devs = append(devs, dev)
	}
	vm.Config.Hardware.Device = devs
	simulator.Map.Update(&vm.VirtualMachine, []types.PropertyChange{{Name: "config.hardware.device", Val: devs}})
}

// mergeExtraConfig applies extraConfig as vSphere does: replace by key, "" deletes.
func (vm *VM) mergeExtraConfig(opts []types.BaseOptionValue) {
	cur := vm.Config.ExtraConfig
	for _, o := range opts {
		v := o.GetOptionValue()
		var out []types.BaseOptionValue
		for _, c := range cur {
			if c.GetOptionValue().Key != v.Key {
				out = append(out, c)
			}
		}
		if s, isStr := v.Value.(string); !isStr || s != "" {
			out = append(out, &types.OptionValue{Key: v.Key, Value: v.Value})
		}
		cur = out
	}
	vm.Config.ExtraConfig = cur
	simulator.Map.Update(&vm.VirtualMachine, []types.PropertyChange{{Name: "config.extraConfig", Val: cur}})
}

// hotaddHolds refuses removing snapshot rec while a mover holds one of the files its
// consolidation must lock (the frozen file or its child). Caller holds vm.st.mu.
func (vm *VM) hotaddHolds(rec *snapRec) *labFault {
	hotadd.Lock()
	defer hotadd.Unlock()
	for _, d := range vm.st.disks {
		l := rec.frozen[d.Key]
		idx := d.layerIndex(l)
		if l == nil || idx < 0 {
			continue
		}
		for _, m := range hotadd.movers {
			for _, h := range m.attached {
				if h.disk == d && (h.layer == l || (idx+1 < len(d.layers) && h.layer == d.layers[idx+1])) {
					return fault(&types.FileLocked{FileFault: types.FileFault{File: h.layer.dsPath()}},
						"An error occurred while consolidating disks: Failed to lock the file %s (hot-added to another virtual machine)", h.layer.dsPath())
				}
			}
		}
	}
	return nil
}

// hotAdded reports whether device key is a disk hot-added to this VM as a data mover: such a
// disk stays the source VM's frozen file, never a disk of the mover (nfc_import.go's adoption
// of disks attached by ReconfigVM skips it).
func (vm *VM) hotAdded(key int32) bool {
	hotadd.Lock()
	defer hotadd.Unlock()
	m := hotadd.movers[vm.Self.Value]
	return m != nil && m.attached[key] != nil
}
