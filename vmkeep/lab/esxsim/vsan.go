package main

// vSAN and vVol datastores: no flat files. A disk's descriptor (NAME.vmdk, in the VM's
// namespace folder, readable through /folder) names its data as an object
// (`RW n VMFS "vsan://<uuid>"`, `RW n VMFS "vvol://<container>/rfc4122.<uuid>"`); the object's
// bytes live in the lab's object store (DatastoreSpec.ObjectDir, outside the datastore
// directory), so `/folder/...-flat.vmdk` answers 404 as on a real site. Snapshot deltas are
// objects too: vSAN's are `createType="vsanSparse"` with a `VSANSPARSE "vsan://…"` extent;
// the lab's vVol deltas are `VMFSSPARSE "vvol://…"` extents (a real array makes native
// snapshots; vmkeep reads either only through NFC). The objects are stored as the lab's
// COWD / flat files, so every other lab feature (CBT, writes, consolidation) works unchanged.

import (
	"crypto/rand"
	"fmt"
	"io/ioutil"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
)

// extentFile is the host file holding a layer's data: its object, or its extent file.
func (l *layer) extentFile() string {
	if l.object != "" {
		return l.object
	}
	return filepath.Join(l.dsDir, l.extentRel())
}

type objectStore struct {
	scheme string // vsan | vvol
	dir    string
}

var (
	objectStoresMu sync.Mutex
	objectStores   = map[string]objectStore{} // datastore name -> store
	objectExtentRe = regexp.MustCompile(`(?m)^RW\s+\d+\s+[A-Z]+\s+"((?:vsan|vvol)://[^"]+)"`)
)

// registerObjectStores notes the datastores whose disks are objects (called from build).
func (lab *Lab) registerObjectStores() error {
	objectStoresMu.Lock()
	defer objectStoresMu.Unlock()
	for _, ds := range lab.spec.Datastores {
		if ds.ObjectDir == "" {
			continue
		}
		scheme := "vsan"
		if strings.EqualFold(ds.Type, "VVOL") {
			scheme = "vvol"
		}
		if err := os.MkdirAll(ds.ObjectDir, 0o755); err != nil {
			return err
		}
		objectStores[ds.Name] = objectStore{scheme: scheme, dir: ds.ObjectDir}
	}
	return nil
}

func storeOf(ds string) (objectStore, bool) {
	objectStoresMu.Lock()
	defer objectStoresMu.Unlock()
	s, ok := objectStores[ds]
	return s, ok
}

// objectFile maps an object URI to its file in the datastore's object store.
func objectFile(ds, uri string) (string, error) {
	s, ok := storeOf(ds)
	if !ok {
		return "", fmt.Errorf("datastore %s has no object store for %s", ds, uri)
	}
	name := path.Base(uri[strings.Index(uri, "://")+3:])
	if name == "" || name == "." || name == ".." || strings.ContainsAny(name, "/\\") {
		return "", fmt.Errorf("bad object URI %q", uri)
	}
	return filepath.Join(s.dir, name), nil
}

// objectExtent returns the object URI a descriptor names, or "".
func objectExtent(desc []byte) string {
	if m := objectExtentRe.FindSubmatch(desc); m != nil {
		return string(m[1])
	}
	return ""
}

func newUUID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

// newObjectURI names a new object on datastore ds (same container as parentURI for vVols).
func newObjectURI(ds, parentURI string) string {
	s, _ := storeOf(ds)
	if s.scheme == "vvol" {
		container := strings.TrimPrefix(parentURI, "vvol://")
		if i := strings.Index(container, "/"); i > 0 {
			container = container[:i]
		}
		return fmt.Sprintf("vvol://%s/rfc4122.%s", container, newUUID())
	}
	return "vsan://" + newUUID()
}

// pushObjectDelta is pushDelta for disks on an object datastore: the delta's extent is a new
// object. ok is false when the disk's top layer is not an object (the caller goes on).
func (d *Disk) pushObjectDelta(parent *layer) (*layer, bool, error) {
	if parent.object == "" {
		return nil, false, nil
	}
	base := strings.TrimSuffix(parent.rel, ".vmdk")
	if m := regexp.MustCompile(`-\d{6}$`).FindStringIndex(base); m != nil {
		base = base[:m[0]]
	}
	var rel string
	for n := 1; n < 1000000; n++ {
		rel = fmt.Sprintf("%s-%06d.vmdk", base, n)
		if _, err := os.Stat(filepath.Join(parent.dsDir, rel)); os.IsNotExist(err) {
			break
		}
	}
	uri := newObjectURI(parent.ds, parent.objectURI)
	file, err := objectFile(parent.ds, uri)
	if err != nil {
		return nil, true, err
	}
	// the object holds a vmfsSparse (COWD) extent in the lab: reads, writes, CBT and
	// consolidation work as for any delta (deltafmt.go)
	l := &layer{ds: parent.ds, dsDir: parent.dsDir, rel: rel, cid: randCID(), isDelta: true,
		object: file, objectURI: uri, format: fmtVMFSSparse}
	c, err := createDelta(l.format, file, d.Capacity)
	if err != nil {
		return nil, true, err
	}
	l.delta = c
	createType, kind := "vsanSparse", "VSANSPARSE"
	if strings.HasPrefix(uri, "vvol://") {
		createType, kind = "vmfsSparse", "VMFSSPARSE"
	}
	desc := fmt.Sprintf(`# Disk DescriptorFile
version=4
encoding="UTF-8"
CID=%08x
parentCID=%08x
createType="%s"
parentFileNameHint="%s"
# Extent description
RW %d %s "%s"

# The Disk Data Base
#DDB

ddb.longContentID = "%s"
`, l.cid, parent.cid, createType, path.Base(parent.rel), (d.Capacity+511)/512, kind, uri,
		strings.ReplaceAll(newUUID(), "-", ""))
	if err := ioutil.WriteFile(l.localPath(), []byte(desc), 0o600); err != nil {
		c.file().Close()
		os.Remove(file)
		return nil, true, err
	}
	d.layers = append(d.layers, l)
	return l, true, nil
}

func randCID() uint32 {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3]) | 1
}

// objectPlaceholders creates empty NAME-flat.vmdk files for vs's object disks (the simulator's
// CreateVM insists on them) and returns the function that removes them again.
func (lab *Lab) objectPlaceholders(vs VMSpec) func() {
	var made []string
	for _, ds := range vs.Disks {
		if _, ok := storeOf(ds.Datastore); !ok {
			continue
		}
		p := filepath.Join(lab.dsDirs[ds.Datastore], strings.TrimSuffix(ds.Path, ".vmdk")+"-flat.vmdk")
		if f, err := os.OpenFile(p, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600); err == nil {
			f.Close()
			made = append(made, p)
		}
	}
	return func() {
		for _, p := range made {
			os.Remove(p)
		}
	}
}
