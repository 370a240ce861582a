package main

// Snapshot delta formats per datastore type, as ESXi chooses them: VMFS6 datastores get
// SEsparse deltas (sesparse.go, 4 KiB grains, "unmapped" grains after a guest trim); VMFS5 and
// NFS datastores get vmfsSparse/COWD redo logs (cowd.go) with 512-byte grains. Also: guest
// trim (UNMAP) on a disk chain, and the VMFS volume info of each datastore.

import (
	"errors"
	"fmt"
	"os"
	"sort"
	"strings"
	"syscall"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/types"
)

type grainKind int

const (
	grainUnalloc grainKind = iota // not in this layer: the parent's data
	grainData                     // data in this layer's file
	grainZero                     // reads zeros (SEsparse zero or unmapped grain)
)

var errNoUnmap = errors.New("format has no unmapped grains")

// sparseDelta is one snapshot delta extent.
type sparseDelta interface {
	grainBytes() int64
	lookup(g int64) (grainKind, int64) // grainData: byte offset of the grain in file()
	allocGrain(g int64) (int64, error) // new grain (caller fills it); its byte offset
	unmap(g int64) error               // grain reads zeros from now on; errNoUnmap if impossible
	allocated() []int64                // grains held (any kind), ascending
	file() *os.File
}

const (
	fmtVMFSSparse = "vmfsSparse"
	fmtSESparse   = "seSparse"
)

// dsVMFS maps a datastore name to its VMFS major version (0: not VMFS, e.g. NFS). Filled when
// the lab is built, read-only afterwards.
var dsVMFS = map[string]int{}

// deltaFormatFor is the delta format ESXi uses for snapshots of a disk of this capacity on
// datastore ds: SEsparse on VMFS6, and on VMFS5 for disks of 2 TiB and more; else vmfsSparse.
func deltaFormatFor(ds string, capacity int64) string {
	if dsVMFS[ds] >= 6 || (dsVMFS[ds] == 5 && capacity >= 2<<40) {
		return fmtSESparse
	}
	return fmtVMFSSparse
}

func deltaSuffix(format string) string {
	if format == fmtSESparse {
		return "-sesparse.vmdk"
	}
	return "-delta.vmdk"
}

func createDelta(format, path string, capacity int64) (sparseDelta, error) {
	if format == fmtSESparse {
		return createSESparse(path, capacity)
	}
	return createCowd(path, capacity, cowdGrainSecs)
}

// deltaDescriptor is the text descriptor of a delta layer.
func deltaDescriptor(format string, cid, parentCID uint32, parentHint string, capacity int64, extent string, longCID uint64) string {
	kind := "VMFSSPARSE"
	if format == fmtSESparse {
		kind = "SESPARSE"
	}
	return fmt.Sprintf(`# Disk DescriptorFile
version=1
encoding="UTF-8"
CID=%08x
parentCID=%08x
isNativeSnapshot="no"
createType="%s"
parentFileNameHint="%s"
# Extent description
RW %d %s "%s"

# The Disk Data Base
#DDB

ddb.longContentID = "%032x"
`, cid, parentCID, format, parentHint, (capacity+511)/512, kind, extent, longCID)
}

// setDeltaBacking fills a delta layer's backing info as vSphere reports it.
func setDeltaBacking(nb *types.VirtualDiskFlatVer2BackingInfo, l *layer) {
	if strings.HasPrefix(l.objectURI, "vsan://") { // vsan.go
		nb.DeltaDiskFormat = "vsanSparseFormat" // VirtualDiskDeltaDiskFormat (vSphere 6.0+)
	} else if l.format == fmtSESparse {
		nb.DeltaDiskFormat = string(types.VirtualDiskDeltaDiskFormatSeSparseFormat)
	} else {
		nb.DeltaDiskFormat = string(types.VirtualDiskDeltaDiskFormatRedoLogFormat)
		nb.DeltaDiskFormatVariant = "vmfsSparseVariant"
	}
	nb.DeltaGrainSize = int32(l.delta.grainBytes() / 1024)
}

// registerVMFS records the datastores' VMFS versions and gives VMFS datastores a
// VmfsDatastoreInfo (info.vmfs.majorVersion) as vCenter reports it.
func (lab *Lab) registerVMFS() {
	for _, s := range lab.spec.Datastores {
		if s.Type == "" || s.Type == "VMFS" {
			v := s.VMFSVersion
			if v == 0 {
				v = 5
			}
			dsVMFS[s.Name] = v
		}
	}
	for _, e := range simulator.Map.All("Datastore") {
		ds := e.(*simulator.Datastore)
		v, ok := dsVMFS[ds.Name]
		if !ok {
			continue
		}
		info := ds.Info.GetDatastoreInfo()
		ds.Info = &types.VmfsDatastoreInfo{DatastoreInfo: *info, MaxPhysicalRDMFileSize: 62 << 40,
			MaxVirtualRDMFileSize: 62 << 40, Vmfs: &types.HostVmfsVolume{
				HostFileSystemVolume: types.HostFileSystemVolume{Type: "VMFS", Name: ds.Name,
					Capacity: 500 << 30},
				BlockSizeMb: 1, MaxBlocks: 63963136, MajorVersion: int32(v),
				Version: map[int]string{5: "5.81", 6: "6.82"}[v], Uuid: fmt.Sprintf("5f1e%04x-lab", v),
				Ssd: types.NewBool(true), Local: types.NewBool(false)}}
	}
}

// trim discards [off, off+length) as a guest UNMAP does. Whole grains of an SEsparse top
// delta become "unmapped"; everything else (COWD grains, partial grains) is written as zeros;
// on a flat base disk the range is punched out of the file. The area reads zeros afterwards
// and is recorded in CBT when track is set.
func (d *Disk) trim(off, length int64, track bool) error {
	if off < 0 || length <= 0 || off+length > d.Capacity {
		return fmt.Errorf("trim outside the disk")
	}
	top := d.top()
	end := off + length
	switch {
	case top.delta == nil:
		if err := punchHole(top.flat, off, length); err != nil {
			if err := d.writeLayer(len(d.layers)-1, make([]byte, length), off); err != nil {
				return err
			}
		}
	default:
		gb := top.delta.grainBytes()
		first, last := ceilDiv(off, gb), end/gb // whole grains [first, last)
		if first >= last {
			if err := d.writeLayer(len(d.layers)-1, make([]byte, length), off); err != nil {
				return err
			}
			break
		}
		if err := d.writeLayer(len(d.layers)-1, make([]byte, first*gb-off), off); err != nil {
			return err
		}
		if err := d.writeLayer(len(d.layers)-1, make([]byte, end-last*gb), last*gb); err != nil {
			return err
		}
		for g := first; g < last; g++ {
			err := top.delta.unmap(g)
			if err == errNoUnmap {
				err = d.writeLayer(len(d.layers)-1, make([]byte, gb), g*gb)
			}
			if err != nil {
				return err
			}
		}
	}
	if track && d.cbt != nil {
		d.cbt.record(off, length)
	}
	return nil
}

func punchHole(f *os.File, off, length int64) error {
	const punch, keepSize = 0x02, 0x01 // FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE
	return syscall.Fallocate(int(f.Fd()), punch|keepSize, off, length)
}

// mergeExtents sorts extents and joins those that touch or overlap.
func mergeExtents(in []extent) []extent {
	sort.Slice(in, func(i, j int) bool { return in[i].start < in[j].start })
	var out []extent
	for _, e := range in {
		if e.length <= 0 {
			continue
		}
		if n := len(out); n > 0 && e.start <= out[n-1].start+out[n-1].length {
			if end := e.start + e.length; end > out[n-1].start+out[n-1].length {
				out[n-1].length = end - out[n-1].start
			}
			continue
		}
		out = append(out, e)
	}
	return out
}

// deltaExtents lists the byte extents a delta layer holds, clipped to the capacity.
func deltaExtents(l *layer, capacity int64) []extent {
	gb := l.delta.grainBytes()
	var out []extent
	for _, g := range l.delta.allocated() {
		s := g * gb
		n := gb
		if s+n > capacity {
			n = capacity - s
		}
		if n <= 0 {
			continue
		}
		if k := len(out); k > 0 && out[k-1].start+out[k-1].length == s {
			out[k-1].length += n
		} else {
			out = append(out, extent{s, n})
		}
	}
	return out
}
