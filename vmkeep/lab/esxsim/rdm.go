package main

// Physical-mode raw device mappings (pRDM): a disk whose backing is a
// RawDiskMappingVer1BackingInfo with compatibilityMode physicalMode passes a SAN LUN straight
// to the guest. vSphere keeps such a disk out of every snapshot, whatever its diskMode says
// (vSphere "Snapshot Limitations": no snapshots of physical-mode RDMs), and tracks no changes on
// it, so a backup through snapshots cannot hold it. In the lab the LUN is the mapping file's
// flat extent; the disk keeps its one layer for ever.

import (
	"crypto/sha1"
	"fmt"
	"html"
	"regexp"
	"sync"

	"github.com/vmware/govmomi/vim25/types"
)

// flatView is a disk backing as the lab's disk code reads it (file, mode, sharing, uuid):
// a flat VMDK as it is, a raw device mapping as a flat view of its mapping file.
// physical reports a physical-mode mapping; ok is false for any other backing.
func flatView(b types.BaseVirtualDeviceBackingInfo) (flat *types.VirtualDiskFlatVer2BackingInfo, physical, ok bool) {
	switch x := b.(type) {
	case *types.VirtualDiskFlatVer2BackingInfo:
		return x, false, true
	case *types.VirtualDiskRawDiskMappingVer1BackingInfo:
		view := &types.VirtualDiskFlatVer2BackingInfo{
			VirtualDeviceFileBackingInfo: x.VirtualDeviceFileBackingInfo,
			DiskMode:                     x.DiskMode,
			Uuid:                         x.Uuid,
			Sharing:                      x.Sharing,
			ThinProvisioned:              types.NewBool(false),
		}
		return view, x.CompatibilityMode == string(types.VirtualDiskCompatibilityModePhysicalMode), true
	}
	return nil, false, false
}

// inSnapshots reports whether a snapshot of the VM holds d: not independent, not a pRDM.
func (d *Disk) inSnapshots() bool {
	return !d.Independent && !d.PhysicalRDM
}

// rdmBacking is the backing vSphere reports for the pRDM d: its mapping file, the LUN's
// identity (derived from the disk's uuid), physicalMode, no change id.
func (vm *VM) rdmBacking(d *Disk, mode string) *types.VirtualDiskRawDiskMappingVer1BackingInfo {
	l := d.layers[0]
	sum := sha1.Sum([]byte(d.UUID))
	lun := fmt.Sprintf("02000000006000c29%x", sum[:8])
	return &types.VirtualDiskRawDiskMappingVer1BackingInfo{
		VirtualDeviceFileBackingInfo: types.VirtualDeviceFileBackingInfo{
			FileName: l.dsPath(), Datastore: vm.dsRef(l.ds),
		},
		LunUuid:           lun,
		DeviceName:        "vml." + lun,
		CompatibilityMode: string(types.VirtualDiskCompatibilityModePhysicalMode),
		DiskMode:          mode,
		Uuid:              d.UUID,
		ContentId:         fmt.Sprintf("%08x%024x", l.cid, 0),
		Sharing:           sharing(d.MultiWriter),
	}
}

// vcsim (govmomi's simulator) takes every disk backing for a flat VMDK and panics on a raw
// device mapping, so a mapping never reaches it: a CreateVM_Task or ReconfigVM_Task body
// names each one as a flat backing of its mapping file (noteRDMBackings), the lab remembers
// which mapping files are physical-mode (rdmFiles), and the lab disk made of that file reports
// the mapping again (rdmBacking, through syncConfig). A ReconfigVM_Task the lab hands on to
// vcsim sees flat backings only (flatForVcsim).
var (
	rdmFiles     sync.Map // mapping file "[ds] path" -> physical (bool)
	rdmBackingRe = regexp.MustCompile(`(?s)(<backing[^>]*xsi:type=")(?:[\w]+:)?VirtualDiskRawDiskMappingVer1BackingInfo(">)(.*?)(</backing>)`)
	rdmFieldRe   = regexp.MustCompile(`(?s)<(lunUuid|deviceName|compatibilityMode)>([^<]*)</(?:lunUuid|deviceName|compatibilityMode)>`)
	fileNameRe   = regexp.MustCompile(`<fileName>([^<]*)</fileName>`)
)

// noteRDMBackings rewrites the raw device mappings of a request body as flat backings of
// their mapping files, remembering the physical-mode ones.
func noteRDMBackings(body []byte) []byte {
	return rdmBackingRe.ReplaceAllFunc(body, func(m []byte) []byte {
		parts := rdmBackingRe.FindSubmatch(m)
		inner := parts[3]
		physical := false
		for _, f := range rdmFieldRe.FindAllSubmatch(inner, -1) {
			if string(f[1]) == "compatibilityMode" && string(f[2]) == string(types.VirtualDiskCompatibilityModePhysicalMode) {
				physical = true
			}
		}
		if name := fileNameRe.FindSubmatch(inner); name != nil {
			rdmFiles.Store(html.UnescapeString(string(name[1])), physical)
		}
		inner = rdmFieldRe.ReplaceAll(inner, nil)
		out := append([]byte{}, parts[1]...)
		out = append(out, "VirtualDiskFlatVer2BackingInfo"...)
		out = append(out, parts[2]...)
		out = append(out, inner...)
		return append(out, parts[4]...)
	})
}

// isPhysicalRDM reports whether the file a new disk was made of is a physical-mode mapping.
func isPhysicalRDM(fileName string) bool {
	v, ok := rdmFiles.Load(fileName)
	return ok && v.(bool)
}

// flatForVcsim replaces the VM's raw device mapping backings by flat views of their mapping
// files, for a call into vcsim; the caller's syncConfig restores them. Caller holds st.mu.
func (vm *VM) flatForVcsim() {
	vm.Config.Hardware.Device = devicesWith(vm.Config.Hardware.Device, func(disk *types.VirtualDisk) *types.VirtualDisk {
		if _, ok := disk.Backing.(*types.VirtualDiskRawDiskMappingVer1BackingInfo); !ok {
			return nil
		}
		flat, _, _ := flatView(disk.Backing)
		nd := *disk
		nd.Backing = flat
		return &nd
	})
}
