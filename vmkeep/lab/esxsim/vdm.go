package main

// VirtualDiskManager.MoveVirtualDisk and CopyVirtualDisk as ESX does them. Stock vcsim moves or
// copies NAME.vmdk and NAME-flat.vmdk as plain files and leaves the descriptor's extent line
// naming the old flat file: a moved disk's descriptor then points at a file that no longer
// exists (a reader that follows the descriptor, as ESX's datastore file service and vmkeep's
// https reader do, gets 404), and a copy's descriptor points at the source's extent. ESX
// rewrites the extent name; a move takes the disk's change-tracking file (NAME-ctk.vmdk) along,
// a copy starts without one.
//
// Locks, as ESX takes them: a powered-on VM holds every file of its disk chain open (its
// writable top exclusively, the frozen layers under a snapshot read-only), and a mover that
// hot-added a frozen layer holds that one read-only. A move needs every lock, so it fails with
// FileLocked on any disk a running VM or a mover has open; a copy needs a read lock, so it
// fails only on a running VM's writable top (copying a frozen base under a snapshot works).

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
)

// LabVirtualDiskManager wraps the stock manager (embedded by value, as the registry holds it).
type LabVirtualDiskManager struct {
	simulator.VirtualDiskManager
	lab *Lab
}

func (lab *Lab) installVirtualDiskManager() {
	si := simulator.Map.Get(vim25.ServiceInstance).(*simulator.ServiceInstance)
	ref := si.Content.VirtualDiskManager
	if ref == nil {
		return
	}
	if orig, ok := simulator.Map.Get(*ref).(*simulator.VirtualDiskManager); ok {
		simulator.Map.Put(&LabVirtualDiskManager{VirtualDiskManager: *orig, lab: lab})
	}
}

func (m *LabVirtualDiskManager) MoveVirtualDiskTask(ctx *simulator.Context, req *types.MoveVirtualDisk_Task) soap.HasFault {
	if f := m.lab.diskLocked(req.SourceName, true); f != nil {
		return &methods.MoveVirtualDisk_TaskBody{Res: &types.MoveVirtualDisk_TaskResponse{
			Returnval: startTask(m, req.SourceName, "moveVirtualDisk", false, failWith(f))}}
	}
	srcCtk := m.lab.localPath(ctkOf(req.SourceName))
	res := m.VirtualDiskManager.MoveVirtualDiskTask(ctx, req)
	if body, ok := res.(*methods.MoveVirtualDisk_TaskBody); ok && body.Res != nil && taskSucceeded(body.Res.Returnval) {
		m.lab.relinkFlatExtent(req.DestName)
		if _, err := os.Stat(srcCtk); err == nil {
			_ = os.Rename(srcCtk, m.lab.localPath(ctkOf(req.DestName)))
		}
	}
	return res
}

func (m *LabVirtualDiskManager) CopyVirtualDiskTask(ctx *simulator.Context, req *types.CopyVirtualDisk_Task) soap.HasFault {
	if f := m.lab.diskLocked(req.SourceName, false); f != nil {
		return &methods.CopyVirtualDisk_TaskBody{Res: &types.CopyVirtualDisk_TaskResponse{
			Returnval: startTask(m, req.SourceName, "copyVirtualDisk", false, failWith(f))}}
	}
	res := m.VirtualDiskManager.CopyVirtualDiskTask(ctx, req)
	if body, ok := res.(*methods.CopyVirtualDisk_TaskBody); ok && body.Res != nil && taskSucceeded(body.Res.Returnval) {
		m.lab.relinkFlatExtent(req.DestName)
	}
	return res
}

// diskLocked is the FileLocked fault ESX answers when the disk file dsPath cannot be locked for
// a move (every lock: forMove) or a copy (a read lock), or nil when nothing holds it.
func (lab *Lab) diskLocked(dsPath string, forMove bool) *labFault {
	vm, d, l := lab.findLayer(dsPath)
	if vm == nil {
		return nil // not a disk of any VM: a plain file (or none, which the stock manager reports)
	}
	vm.st.mu.Lock()
	on := vm.Runtime.PowerState == types.VirtualMachinePowerStatePoweredOn
	vm.st.mu.Unlock()
	d.mu.Lock()
	top := d.layerIndex(l) == len(d.layers)-1
	d.mu.Unlock()
	if on && (forMove || top) {
		return fault(&types.FileLocked{FileFault: types.FileFault{File: dsPath}},
			"Failed to lock the file %s: it is in use by virtual machine %s", dsPath, vm.Name)
	}
	if forMove && lab.hotAdded(l) {
		return fault(&types.FileLocked{FileFault: types.FileFault{File: dsPath}},
			"Failed to lock the file %s: it is hot-added to another virtual machine", dsPath)
	}
	return nil
}

// hotAdded reports whether a mover has the layer l attached.
func (lab *Lab) hotAdded(l *layer) bool {
	return lab.findHotAdded(func(h *hotDisk) bool { return h.layer == l }) != nil
}

// findHotAdded is the first disk attached to any mover that match accepts, or nil.
func (lab *Lab) findHotAdded(match func(*hotDisk) bool) *hotDisk {
	hotadd.Lock()
	defer hotadd.Unlock()
	for _, mm := range hotadd.movers {
		for _, h := range mm.attached {
			if match(h) {
				return h
			}
		}
	}
	return nil
}

func taskSucceeded(ref types.ManagedObjectReference) bool {
	t, ok := simulator.Map.Get(ref).(*simulator.Task)
	return ok && t.Info.State == types.TaskInfoStateSuccess
}

// ctkOf is the change-tracking file of the disk descriptor p ("[ds] d/x.vmdk" -> "[ds] d/x-ctk.vmdk").
func ctkOf(p string) string { return strings.TrimSuffix(p, ".vmdk") + "-ctk.vmdk" }

// flatExtentRe matches an extent line of a flat (VMFS/FLAT) extent stored as a file beside the
// descriptor; object extents (vsan://, vvol://) and sparse extents are left alone.
var flatExtentRe = regexp.MustCompile(`(?m)^((?:RW|RDONLY|NOACCESS) \d+ (?:VMFS|FLAT) )"([^"/:]+)"(.*)$`)

// relinkFlatExtent points the descriptor at datastore path dsPath to its own flat file
// (NAME-flat.vmdk beside it), which is where the stock move or copy put the extent.
func (lab *Lab) relinkFlatExtent(dsPath string) {
	desc := lab.localPath(dsPath)
	b, err := os.ReadFile(desc)
	if err != nil {
		return
	}
	flat := strings.TrimSuffix(filepath.Base(desc), ".vmdk") + "-flat.vmdk"
	if _, err := os.Stat(filepath.Join(filepath.Dir(desc), flat)); err != nil {
		return
	}
	out := flatExtentRe.ReplaceAllFunc(b, func(line []byte) []byte {
		m := flatExtentRe.FindSubmatch(line)
		return []byte(string(m[1]) + `"` + flat + `"` + string(m[3]))
	})
	if string(out) != string(b) {
		_ = os.WriteFile(desc, out, 0o644)
	}
}
