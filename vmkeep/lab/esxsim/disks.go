package main

// Virtual disks as chains of layers stored like ESX stores them on VMFS: a base disk
// (NAME.vmdk descriptor + NAME-flat.vmdk extent, sparse when thin) and snapshot deltas
// (NAME-000001.vmdk descriptor + NAME-000001-delta.vmdk VMFS-sparse extent). The top layer is
// the one the guest writes to; lower layers are frozen while a snapshot refers to them.

import (
	"fmt"
	"io/ioutil"
	"math/rand"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"

	"github.com/vmware/govmomi/vim25/types"
)

type layer struct {
	ds      string // datastore name
	dsDir   string // datastore directory on the host
	rel     string // descriptor path relative to the datastore ("vm/vm-000001.vmdk")
	flat    *os.File
	delta   sparseDelta
	format  string // delta format: vmfsSparse | seSparse (deltafmt.go)
	isDelta bool
	cid     uint32
	// vSAN/vVol (vsan.go): the extent is an object; its file in the lab's object store
	object    string
	objectURI string
	// a raw device mapping's base (rdm.go): its mapping file, in the descriptor's folder
	mapping string
}

func (l *layer) dsPath() string    { return fmt.Sprintf("[%s] %s", l.ds, l.rel) }
func (l *layer) localPath() string { return filepath.Join(l.dsDir, l.rel) }
func (l *layer) extentRel() string {
	base := strings.TrimSuffix(l.rel, ".vmdk")
	if l.isDelta {
		return base + deltaSuffix(l.format)
	}
	if l.mapping != "" {
		return path.Join(path.Dir(l.rel), l.mapping)
	}
	return base + "-flat.vmdk"
}

func (l *layer) close() {
	if l.flat != nil {
		l.flat.Close()
	}
	if l.delta != nil {
		l.delta.file().Close()
	}
}

func (l *layer) remove() {
	l.close()
	if l.object != "" {
		os.Remove(l.object)
	}
	os.Remove(filepath.Join(l.dsDir, l.extentRel()))
	os.Remove(l.localPath())
}

// Disk is one virtual disk of a VM.
type Disk struct {
	mu          sync.Mutex
	Key         int32
	Capacity    int64
	Thin        bool
	EagerZeroed bool // thick, zeroed at creation (eagerlyScrub)
	Independent bool
	// MultiWriter: backing.sharing sharingMultiWriter (Oracle RAC, WSFC): such a disk is in
	// no snapshot — vSphere refuses to snapshot the VM unless the disk is independent.
	MultiWriter bool
	// RDM: a raw device mapping's compatibilityMode (rdm.go), "" for a VMDK; a physicalMode
	// mapping is in no snapshot
	RDM    string
	KeyID  *types.CryptoKeyId // encrypted by vSphere VM Encryption (crypto.go)
	UUID   string
	layers []*layer
	cbt    *tracker
}

var cidRe = regexp.MustCompile(`(?m)^CID=([0-9a-fA-F]+)`)

func openBaseLayer(ds, dsDir, rel string) (*layer, error) {
	l := &layer{ds: ds, dsDir: dsDir, rel: rel}
	desc, err := ioutil.ReadFile(l.localPath())
	if err != nil {
		return nil, err
	}
	if m := cidRe.FindSubmatch(desc); m != nil {
		fmt.Sscanf(string(m[1]), "%x", &l.cid)
	}
	if m := rdmExtentRe.FindSubmatch(desc); m != nil { // rdm.go
		l.mapping = string(m[1])
	}
	extent := filepath.Join(dsDir, l.extentRel())
	if uri := objectExtent(desc); uri != "" { // vSAN / vVol object (vsan.go)
		if extent, err = objectFile(ds, uri); err != nil {
			return nil, err
		}
		l.object, l.objectURI = extent, uri
	}
	l.flat, err = os.OpenFile(extent, os.O_RDWR, 0)
	if err != nil {
		return nil, err
	}
	return l, nil
}

func (d *Disk) top() *layer { return d.layers[len(d.layers)-1] }

func (d *Disk) layerIndex(l *layer) int {
	for i, x := range d.layers {
		if x == l {
			return i
		}
	}
	return -1
}

// readAt reads from the chain layers[0..upto] (inclusive).
func (d *Disk) readAt(p []byte, off int64, upto int) error {
	for len(p) > 0 {
		if off >= d.Capacity {
			for i := range p {
				p[i] = 0
			}
			return nil
		}
		n := d.readSpan(off, upto)
		if n > int64(len(p)) {
			n = int64(len(p))
		}
		if err := d.readGrainPart(p[:n], off, upto); err != nil {
			return err
		}
		p = p[n:]
		off += n
	}
	return nil
}

// readSpan is how many bytes from off lie within one grain of every delta of layers[0..upto].
func (d *Disk) readSpan(off int64, upto int) int64 {
	n := int64(1 << 20)
	for i := 1; i <= upto; i++ {
		if l := d.layers[i]; l.delta != nil {
			gb := l.delta.grainBytes()
			if m := gb - off%gb; m < n {
				n = m
			}
		}
	}
	return n
}

func (d *Disk) readGrainPart(p []byte, off int64, upto int) error {
	for i := upto; i >= 0; i-- {
		l := d.layers[i]
		if l.delta != nil {
			gb := l.delta.grainBytes()
			kind, at := l.delta.lookup(off / gb)
			if kind == grainUnalloc {
				continue
			}
			if kind == grainZero {
				for j := range p {
					p[j] = 0
				}
				return nil
			}
			_, err := l.delta.file().ReadAt(p, at+off%gb)
			return err
		}
		n, err := l.flat.ReadAt(p, off)
		if err != nil && n < len(p) {
			for j := n; j < len(p); j++ {
				p[j] = 0
			}
		}
		return nil
	}
	for i := range p {
		p[i] = 0
	}
	return nil
}

// writeAt writes guest data to the top layer (copy-on-write for deltas) and records it in CBT.
func (d *Disk) writeAt(p []byte, off int64, track bool) error {
	if off+int64(len(p)) > d.Capacity {
		return fmt.Errorf("write beyond capacity")
	}
	top := len(d.layers) - 1
	if err := d.writeLayer(top, p, off); err != nil {
		return err
	}
	if track && d.cbt != nil {
		d.cbt.record(off, int64(len(p)))
	}
	return nil
}

func (d *Disk) writeLayer(idx int, p []byte, off int64) error {
	l := d.layers[idx]
	if l.delta == nil {
		_, err := l.flat.WriteAt(p, off)
		return err
	}
	gb := l.delta.grainBytes()
	f := l.delta.file()
	for len(p) > 0 {
		g := off / gb
		in := off % gb
		n := gb - in
		if n > int64(len(p)) {
			n = int64(len(p))
		}
		kind, at := l.delta.lookup(g)
		if kind != grainData {
			buf := make([]byte, gb)
			if kind == grainUnalloc && idx > 0 && n < gb {
				if err := d.readAt(buf, g*gb, idx-1); err != nil {
					return err
				}
			}
			copy(buf[in:], p[:n])
			s, err := l.delta.allocGrain(g)
			if err != nil {
				return err
			}
			if _, err := f.WriteAt(buf, s); err != nil {
				return err
			}
		} else if _, err := f.WriteAt(p[:n], at+in); err != nil {
			return err
		}
		p = p[n:]
		off += n
	}
	return nil
}

// pushDelta freezes the current top and puts a new delta on top (snapshot creation).
func (d *Disk) pushDelta() (*layer, error) {
	parent := d.top()
	if l, ok, err := d.pushObjectDelta(parent); ok { // vSAN / vVol (vsan.go)
		return l, err
	}
	base := strings.TrimSuffix(parent.rel, ".vmdk")
	if m := regexp.MustCompile(`-\d{6}$`).FindStringIndex(base); m != nil {
		base = base[:m[0]]
	}
	var rel string
	for n := 1; n < 1000000; n++ {
		rel = fmt.Sprintf("%s-%06d.vmdk", base, n)
		_, err1 := os.Stat(filepath.Join(parent.dsDir, rel))
		_, err2 := os.Stat(filepath.Join(parent.dsDir, strings.TrimSuffix(rel, ".vmdk")+"-delta.vmdk"))
		if os.IsNotExist(err1) && os.IsNotExist(err2) {
			break
		}
	}
	l := &layer{ds: parent.ds, dsDir: parent.dsDir, rel: rel, cid: rand.Uint32(), isDelta: true,
		format: deltaFormatFor(parent.ds, d.Capacity)}
	c, err := createDelta(l.format, filepath.Join(l.dsDir, l.extentRel()), d.Capacity)
	if err != nil {
		return nil, err
	}
	l.delta = c
	desc := deltaDescriptor(l.format, l.cid, parent.cid, path.Base(parent.rel), d.Capacity,
		path.Base(l.extentRel()), rand.Uint64())
	if err := ioutil.WriteFile(l.localPath(), []byte(desc), 0o600); err != nil {
		c.file().Close()
		return nil, err
	}
	d.layers = append(d.layers, l)
	return l, nil
}

// consolidate merges layers[idx+1] into layers[idx] and drops it (snapshot removal).
func (d *Disk) consolidate(idx int) error {
	if idx+1 >= len(d.layers) {
		return nil
	}
	child := d.layers[idx+1]
	gb := child.delta.grainBytes()
	buf := make([]byte, gb)
	for _, g := range child.delta.allocated() {
		kind, at := child.delta.lookup(g)
		n := gb
		if g*gb+n > d.Capacity {
			n = d.Capacity - g*gb
		}
		if kind == grainZero {
			for j := range buf {
				buf[j] = 0
			}
		} else if _, err := child.delta.file().ReadAt(buf[:n], at); err != nil {
			return err
		}
		if err := d.writeLayer(idx, buf[:n], g*gb); err != nil {
			return err
		}
	}
	d.layers = append(d.layers[:idx+1], d.layers[idx+2:]...)
	child.remove()
	if idx+1 < len(d.layers) {
		relinkParent(d.layers[idx+1], d.layers[idx])
	}
	return nil
}

var (
	parentHintRe = regexp.MustCompile(`(?m)^parentFileNameHint=".*"$`)
	parentCIDRe  = regexp.MustCompile(`(?m)^parentCID=[0-9a-fA-F]+$`)
)

// relinkParent points a delta's descriptor at its new parent after a consolidation.
func relinkParent(l, parent *layer) {
	b, err := ioutil.ReadFile(l.localPath())
	if err != nil {
		return
	}
	b = parentHintRe.ReplaceAll(b, []byte(fmt.Sprintf(`parentFileNameHint="%s"`, path.Base(parent.rel))))
	b = parentCIDRe.ReplaceAll(b, []byte(fmt.Sprintf("parentCID=%08x", parent.cid)))
	_ = ioutil.WriteFile(l.localPath(), b, 0o600)
}

type extent struct{ start, length int64 }

// allocatedExtents lists the allocated areas of the chain layers[0..upto].
func (d *Disk) allocatedExtents(upto int) []extent {
	var all []extent
	for i := 0; i <= upto; i++ {
		l := d.layers[i]
		if l.delta != nil {
			all = append(all, deltaExtents(l, d.Capacity)...)
			continue
		}
		all = append(all, dataExtents(l.flat, d.Capacity)...)
	}
	return mergeExtents(all)
}

func blocksToExtents(marks map[int64]bool, bs, capacity int64) []extent {
	n := (capacity + bs - 1) / bs
	var out []extent
	for b := int64(0); b < n; b++ {
		if !marks[b] {
			continue
		}
		start := b * bs
		end := start + bs
		if end > capacity {
			end = capacity
		}
		if len(out) > 0 && out[len(out)-1].start+out[len(out)-1].length == start {
			out[len(out)-1].length += end - start
		} else {
			out = append(out, extent{start, end - start})
		}
	}
	return out
}

const (
	seekData = 3
	seekHole = 4
)

// dataExtents uses SEEK_DATA/SEEK_HOLE to list a sparse file's allocated regions.
func dataExtents(f *os.File, capacity int64) []extent {
	var out []extent
	fd := int(f.Fd())
	off := int64(0)
	for off < capacity {
		ds, err := syscall.Seek(fd, off, seekData)
		if err != nil || ds >= capacity {
			break
		}
		he, err := syscall.Seek(fd, ds, seekHole)
		if err != nil {
			he = capacity
		}
		if he > capacity {
			he = capacity
		}
		out = append(out, extent{ds, he - ds})
		off = he
	}
	return out
}
