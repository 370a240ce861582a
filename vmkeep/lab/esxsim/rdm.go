package main

// Raw device mappings (RDM): a disk whose backing is a RawDiskMappingVer1BackingInfo passes a
// SAN LUN to the guest; VMFS keeps a descriptor (createType vmfsRawDeviceMap or
// vmfsPassthroughRawDeviceMap) whose one VMFSRDM extent is a mapping file standing for the LUN
// (mapLUN). In the lab the LUN is that mapping file's data.
//
// Physical mode (pRDM) passes SCSI commands straight through: vSphere keeps such a disk out of
// every snapshot, whatever its diskMode says (vSphere "Snapshot Limitations": no snapshots of
// physical-mode RDMs), and tracks no changes on it, so a backup through snapshots cannot hold
// it; the disk keeps its one layer for ever.
//
// Virtual mode (vRDM) is snapshotted like a VMDK: a snapshot's delta files sit above the
// mapping, the backing is a chain of RDM backings with the delta format on top, and CBT tracks
// it (only physical-mode mappings are without CBT). Its base is no flat file, so a reader of
// datastore files finds none.

import (
	"bytes"
	"crypto/sha1"
	"fmt"
	"html"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"

	"github.com/vmware/govmomi/vim25/types"
)

const (
	physicalMode = string(types.VirtualDiskCompatibilityModePhysicalMode)
	virtualMode  = string(types.VirtualDiskCompatibilityModeVirtualMode)
)

// flatView is a disk backing as the lab's disk code reads it (file, mode, sharing, uuid):
// a flat VMDK as it is, a raw device mapping as a flat view of its mapping file. compat is
// the mapping's compatibilityMode ("" for a VMDK); ok is false for any other backing.
func flatView(b types.BaseVirtualDeviceBackingInfo) (flat *types.VirtualDiskFlatVer2BackingInfo, compat string, ok bool) {
	switch x := b.(type) {
	case *types.VirtualDiskFlatVer2BackingInfo:
		return x, "", true
	case *types.VirtualDiskRawDiskMappingVer1BackingInfo:
		view := &types.VirtualDiskFlatVer2BackingInfo{
			VirtualDeviceFileBackingInfo: x.VirtualDeviceFileBackingInfo,
			DiskMode:                     x.DiskMode,
			Uuid:                         x.Uuid,
			Sharing:                      x.Sharing,
			ThinProvisioned:              types.NewBool(false),
		}
		return view, x.CompatibilityMode, true
	}
	return nil, "", false
}

// inSnapshots reports whether a snapshot of the VM holds d: not independent, not a pRDM.
// A virtual-mode RDM is snapshotted like a VMDK: its deltas are files, its base the LUN.
func (d *Disk) inSnapshots() bool {
	return !d.Independent && d.RDM != physicalMode
}

// rdmBacking is the backing vSphere reports for the raw device mapping d over layers[0..upto]:
// a chain of RawDiskMappingVer1BackingInfo (the mapping file at the base, snapshot deltas
// above it with their delta format), each naming the LUN (its identity derived from the
// disk's uuid) and the compatibility mode. A pRDM has one layer for ever and no change id.
func (vm *VM) rdmBacking(d *Disk, upto int, mode, changeID string) *types.VirtualDiskRawDiskMappingVer1BackingInfo {
	sum := sha1.Sum([]byte(d.UUID))
	lun := fmt.Sprintf("02000000006000c29%x", sum[:8])
	var b *types.VirtualDiskRawDiskMappingVer1BackingInfo
	for i := 0; i <= upto; i++ {
		l := d.layers[i]
		nb := &types.VirtualDiskRawDiskMappingVer1BackingInfo{
			VirtualDeviceFileBackingInfo: types.VirtualDeviceFileBackingInfo{
				FileName: l.dsPath(), Datastore: vm.dsRef(l.ds),
			},
			LunUuid:           lun,
			DeviceName:        "vml." + lun,
			CompatibilityMode: d.RDM,
			DiskMode:          mode,
			Uuid:              d.UUID,
			ContentId:         fmt.Sprintf("%08x%024x", l.cid, 0),
			Parent:            b,
			Sharing:           sharing(d.MultiWriter),
		}
		if l.delta != nil {
			flat := &types.VirtualDiskFlatVer2BackingInfo{}
			setDeltaBacking(flat, l) // deltafmt.go
			nb.DeltaDiskFormat, nb.DeltaGrainSize = flat.DeltaDiskFormat, flat.DeltaGrainSize
		}
		b = nb
	}
	if d.RDM == virtualMode {
		b.ChangeId = changeID
	}
	return b
}

// rdmExtentRe finds the mapping file a raw device mapping's descriptor names.
var rdmExtentRe = regexp.MustCompile(`(?m)^RW \d+ VMFSRDM "([^"/]+)"`)

// mapLUN makes the base disk whose descriptor is desc a raw device mapping as VMFS stores one
// (compat "" leaves a VMDK as it is): a descriptor of createType vmfsRawDeviceMap (virtual
// mode) or vmfsPassthroughRawDeviceMap (physical) whose one extent is VMFSRDM, the mapping
// file NAME-rdm.vmdk / NAME-rdmp.vmdk. The lab's "LUN" is that file's data: the flat extent
// the client wrote is renamed to it. A reader that opens only flat extents finds none.
func mapLUN(desc, compat string) error {
	if compat == "" {
		return nil
	}
	text, err := os.ReadFile(desc)
	if err != nil || rdmExtentRe.Match(text) {
		return err
	}
	base := strings.TrimSuffix(desc, ".vmdk")
	suffix, createType := "-rdm.vmdk", "vmfsRawDeviceMap"
	if compat == physicalMode {
		suffix, createType = "-rdmp.vmdk", "vmfsPassthroughRawDeviceMap"
	}
	if err := os.Rename(base+"-flat.vmdk", base+suffix); err != nil {
		return err
	}
	out := createTypeRe.ReplaceAllString(string(text), `createType="`+createType+`"`)
	out = vmfsExtentRe.ReplaceAllString(out, `RW $1 VMFSRDM "`+filepath.Base(base)+suffix+`"`)
	return os.WriteFile(desc, []byte(out), 0o600)
}

var (
	createTypeRe = regexp.MustCompile(`(?m)^createType="[^"]*"`)
	vmfsExtentRe = regexp.MustCompile(`(?m)^RW (\d+) VMFS "[^"]*"`)
)

// vcsim (govmomi's simulator) takes every disk backing for a flat VMDK and panics on a raw
// device mapping, so a mapping never reaches it: a CreateVM_Task or ReconfigVM_Task body
// names each one as a flat backing of its mapping file (noteRDMBackings), the lab remembers
// each mapping file's mode (rdmFiles), and the lab disk made of that file reports
// the mapping again (rdmBacking, through syncConfig). A ReconfigVM_Task the lab hands on to
// vcsim sees flat backings only (flatForVcsim).
var (
	rdmFiles     sync.Map // mapping file "[ds] path" -> compatibilityMode (string)
	rdmBackingRe = regexp.MustCompile(`(?s)(<backing[^>]*xsi:type=")(?:[\w]+:)?VirtualDiskRawDiskMappingVer1BackingInfo(">)(.*?)(</backing>)`)
	rdmFieldRe   = regexp.MustCompile(`(?s)<(lunUuid|deviceName|compatibilityMode)>([^<]*)</(?:lunUuid|deviceName|compatibilityMode)>`)
	fileNameRe   = regexp.MustCompile(`<fileName>([^<]*)</fileName>`)
)

// noteRDMBackings rewrites the raw device mappings of a request body as flat backings of
// their mapping files, remembering each one's compatibility mode.
func noteRDMBackings(body []byte) []byte {
	return rdmBackingRe.ReplaceAllFunc(body, func(m []byte) []byte {
		parts := rdmBackingRe.FindSubmatch(m)
		inner := parts[3]
		compat := virtualMode // vSphere's default for a mapping that names none
		for _, f := range rdmFieldRe.FindAllSubmatch(inner, -1) {
			if string(f[1]) == "compatibilityMode" && string(f[2]) == physicalMode {
				compat = physicalMode
			}
		}
		if name := fileNameRe.FindSubmatch(inner); name != nil {
			rdmFiles.Store(html.UnescapeString(string(name[1])), compat)
		}
		inner = rdmFieldRe.ReplaceAll(inner, nil)
		out := append([]byte{}, parts[1]...)
		out = append(out, "VirtualDiskFlatVer2BackingInfo"...)
		out = append(out, parts[2]...)
		out = append(out, inner...)
		return append(out, parts[4]...)
	})
}

// rdmMode is the compatibility mode of the raw device mapping a new disk was made of
// (compat, when its backing still says, else what noteRDMBackings remembered of fileName);
// "" for a VMDK. What was remembered is used once: a VMDK made later at the same path (the
// VM destroyed, its files reused) is not taken for a mapping.
func rdmMode(fileName, compat string) string {
	v, ok := rdmFiles.LoadAndDelete(fileName)
	if compat != "" {
		return compat
	}
	if ok {
		return v.(string)
	}
	return ""
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

// rdmOffVMFS finds a raw device mapping in a CreateVM_Task or ReconfigVM_Task body whose mapping
// file would sit on a datastore that is not VMFS: vSphere keeps mapping files on VMFS only (an
// NFS, vSAN or vVol datastore holds none). It returns the device's index in the spec's
// deviceChange, or -1 when there is none.
func (lab *Lab) rdmOffVMFS(method string, body []byte) int {
	if method != "CreateVM_Task" && method != "ReconfigVM_Task" {
		return -1
	}
	for _, at := range rdmBackingRe.FindAllSubmatchIndex(body, -1) {
		name := fileNameRe.FindSubmatch(body[at[6]:at[7]])
		if name == nil {
			continue
		}
		ds, _ := splitDSPath(html.UnescapeString(string(name[1])))
		if kind := lab.dsTypes[ds]; kind != "" && kind != "VMFS" {
			return bytes.Count(body[:at[0]], []byte("<deviceChange")) - 1
		}
	}
	return -1
}
