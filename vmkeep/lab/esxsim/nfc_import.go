package main

// NFC import leases that keep what is uploaded (stock vcsim discards it): ImportVApp creates the
// VM (adopted like any API-created VM, with sparse thin disks), and a PUT/POST of a
// streamOptimized VMDK to the lease's device URL (/nfc/<lease>/<disk file>) is decoded grain by
// grain into the disk — only the grains sent are written, so a thin disk stays thin. The decoder
// is strict like ESX: header magic/version/flags, compressed grains with markers, grains inside
// the disk and aligned, a footer and an end-of-stream marker; anything else fails the upload
// (HTTP 400; the lease stays held). As on vCenter, the VM cannot be destroyed while its lease is
// held; HttpNfcLeaseAbort, or a lease left without HttpNfcLeaseProgress for the timeout (300 s,
// admin nfc-timeout), removes the imported VM. Uploads need the SOAP session cookie (or the lab's
// basic auth). Not modelled: PowerOn and other operations blocked during the lease.
//
// Also here: attaching an existing disk file to a lab VM (ReconfigVM add without a file
// operation) makes it a lab disk, and the per-datastore allocated bytes for the status document.

import (
	"bufio"
	"bytes"
	"compress/zlib"
	"context"
	"encoding/binary"
	"fmt"
	"html"
	"io"
	"io/ioutil"
	"log"
	"net/http"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/vim25/types"
)

type nfcImport struct {
	vm    string
	state string // ready | done | error | aborted
	last  time.Time
}

var (
	nfcMu      sync.Mutex
	nfcImports = map[string]*nfcImport{} // lease moref value -> import
	nfcTimeout = 300 * time.Second       // without HttpNfcLeaseProgress, a lease times out
	nfcReaper  sync.Once

	leaseRetRe  = regexp.MustCompile(`<returnval[^>]*type="HttpNfcLease"[^>]*>([^<]+)</returnval>`)
	leaseThisRe = regexp.MustCompile(`<_this[^>]*type="HttpNfcLease"[^>]*>([^<]+)</_this>`)
	specNameRe  = regexp.MustCompile(`(?s)<configSpec[^>]*>.*?<name>([^<]*)</name>`)
)

// teeWriter keeps a copy of the SOAP response (ImportVApp's lease reference).
type teeWriter struct {
	http.ResponseWriter
	buf bytes.Buffer
}

func (t *teeWriter) Write(p []byte) (int, error) {
	t.buf.Write(p)
	return t.ResponseWriter.Write(p)
}

// soapHooks is called by sdkHandler around each SOAP call: it may wrap the response writer and
// returns what to run after the call (and after adoption).
func (lab *Lab) soapHooks(method string, body []byte, w http.ResponseWriter) (http.ResponseWriter, func()) {
	switch method {
	case "ImportVApp":
		tw := &teeWriter{ResponseWriter: w}
		return tw, func() {
			m, n := leaseRetRe.FindSubmatch(tw.buf.Bytes()), specNameRe.FindSubmatch(body)
			if m == nil || n == nil {
				return
			}
			nfcMu.Lock()
			nfcImports[html.UnescapeString(string(m[1]))] = &nfcImport{vm: escapeName(html.UnescapeString(string(n[1]))),
				state: "ready", last: time.Now()}
			nfcMu.Unlock()
			nfcReaper.Do(func() { go lab.reapLeases() })
			lab.routeImportURLs(html.UnescapeString(string(m[1]))) // strict.go: the host serves it
		}
	case "HttpNfcLeaseProgress":
		return w, func() {
			if m := leaseThisRe.FindSubmatch(body); m != nil {
				nfcMu.Lock()
				if imp := nfcImports[html.UnescapeString(string(m[1]))]; imp != nil {
					imp.last = time.Now()
				}
				nfcMu.Unlock()
			}
		}
	case "HttpNfcLeaseAbort", "HttpNfcLeaseComplete":
		return w, func() {
			m := leaseThisRe.FindSubmatch(body)
			if m == nil {
				return
			}
			nfcMu.Lock()
			imp := nfcImports[html.UnescapeString(string(m[1]))]
			delete(nfcImports, html.UnescapeString(string(m[1])))
			nfcMu.Unlock()
			if imp != nil && method == "HttpNfcLeaseAbort" {
				lab.destroyImported(imp.vm)
			}
		}
	}
	return w, func() {}
}

// reapLeases times out import leases without progress, as vCenter does: the lease enters the
// error state and the objects of the import are removed.
func (lab *Lab) reapLeases() {
	for range time.Tick(200 * time.Millisecond) {
		var dead []string
		nfcMu.Lock()
		for id, imp := range nfcImports {
			if time.Since(imp.last) > nfcTimeout {
				imp.state = "error"
				delete(nfcImports, id)
				dead = append(dead, imp.vm)
			}
		}
		nfcMu.Unlock()
		for _, name := range dead {
			log.Printf("nfc: import lease of %s timed out; removing the VM", name)
			lab.destroyImported(name)
		}
	}
}

// importHoldFault is the fault for operations on a VM held by an open import lease (Destroy,
// PowerOn… are blocked while the lease is held).
func (vm *VM) importHoldFault() *labFault {
	nfcMu.Lock()
	defer nfcMu.Unlock()
	for _, imp := range nfcImports {
		if imp.vm == vm.Name && imp.state == "ready" {
			return fault(&types.InvalidState{},
				"The operation is not allowed in the current state: %s is held by an import lease", vm.Name)
		}
	}
	return nil
}

// adminNfcTimeout: POST /vmkeep-lab/nfc-timeout?seconds=S sets the import lease timeout.
func (lab *Lab) adminNfcTimeout(w http.ResponseWriter, q map[string][]string) {
	var secs float64
	if _, err := fmt.Sscanf(first(q["seconds"]), "%g", &secs); err != nil || secs <= 0 {
		jsonErr(w, 400, "seconds= must be positive")
		return
	}
	nfcMu.Lock()
	nfcTimeout = time.Duration(secs * float64(time.Second))
	nfcMu.Unlock()
	writeJSON(w, 200, map[string]float64{"seconds": secs})
}

func (lab *Lab) destroyImported(name string) {
	vm := lab.vmNamed(name)
	if vm == nil {
		return
	}
	ctx := context.Background()
	task, err := object.NewVirtualMachine(lab.client, vm.Self).Destroy(ctx)
	if err == nil {
		err = task.Wait(ctx)
	}
	if err != nil {
		log.Printf("nfc: destroy %s after abort: %v", name, err)
	}
}

// serveNFC receives a streamOptimized VMDK for one disk of an import lease.
func (lab *Lab) serveNFC(w http.ResponseWriter, r *http.Request) {
	if !lab.checkBasicOrCookie(r) {
		jsonErr(w, http.StatusUnauthorized, "NFC upload without a session")
		return
	}
	if r.Method != http.MethodPut && r.Method != http.MethodPost {
		jsonErr(w, http.StatusMethodNotAllowed, "only PUT/POST of disk streams")
		return
	}
	parts := strings.Split(strings.TrimPrefix(r.URL.Path, "/nfc/"), "/")
	if len(parts) != 2 {
		http.NotFound(w, r)
		return
	}
	nfcMu.Lock()
	imp := nfcImports[parts[0]]
	nfcMu.Unlock()
	if imp == nil || imp.state != "ready" {
		jsonErr(w, http.StatusNotFound, "no such lease (or not ready): "+parts[0])
		return
	}
	vm := lab.vmNamed(imp.vm)
	var disk *Disk
	if vm != nil {
		for _, d := range vm.st.disks {
			if path.Base(d.layers[0].rel) == parts[1] {
				disk = d
			}
		}
	}
	if disk == nil {
		jsonErr(w, http.StatusNotFound, "no such device in lease: "+parts[1])
		return
	}
	n, err := decodeStreamOptimized(bufio.NewReaderSize(r.Body, 1<<20), disk)
	if err != nil { // the lease stays held: the client aborts it, or it times out
		log.Printf("nfc %s %s: %v", imp.vm, parts[1], err)
		jsonErr(w, http.StatusBadRequest, err.Error())
		return
	}
	vm.st.mu.Lock()
	vm.refreshLayout()
	vm.st.mu.Unlock()
	writeJSON(w, 200, map[string]int64{"grain_bytes": n})
}

const (
	soSector    = 512
	soFlagsNeed = 0x10000 | 0x20000 // compressed grains, markers
)

// decodeStreamOptimized writes the grains of a streamOptimized VMDK into d; returns the bytes of
// grain data written.
func decodeStreamOptimized(r io.Reader, d *Disk) (int64, error) {
	hdr := make([]byte, soSector)
	if _, err := io.ReadFull(r, hdr); err != nil {
		return 0, fmt.Errorf("short header: %v", err)
	}
	le := binary.LittleEndian
	if le.Uint32(hdr[0:]) != 0x564D444B || le.Uint32(hdr[4:]) != 3 {
		return 0, fmt.Errorf("not a streamOptimized VMDK (magic/version)")
	}
	if le.Uint32(hdr[8:])&soFlagsNeed != soFlagsNeed || le.Uint16(hdr[77:]) != 1 {
		return 0, fmt.Errorf("not a compressed VMDK with markers")
	}
	capacity := int64(le.Uint64(hdr[12:])) * soSector
	grain := int64(le.Uint64(hdr[20:])) * soSector
	overhead := int64(le.Uint64(hdr[64:]))
	if capacity > d.Capacity || grain <= 0 || grain > 1<<20 || overhead < 1 {
		return 0, fmt.Errorf("header: capacity %d for a %d-byte disk, grain %d", capacity, d.Capacity, grain)
	}
	if _, err := io.CopyN(ioutil.Discard, r, (overhead-1)*soSector); err != nil {
		return 0, fmt.Errorf("short descriptor: %v", err)
	}
	var written int64
	mk := make([]byte, 12)
	for {
		if _, err := io.ReadFull(r, mk); err != nil {
			return written, fmt.Errorf("stream ends without an end-of-stream marker: %v", err)
		}
		val, size := int64(le.Uint64(mk[0:])), int64(le.Uint32(mk[8:]))
		if size > 0 { // a grain
			if size > 2*grain {
				return written, fmt.Errorf("grain at sector %d: %d compressed bytes", val, size)
			}
			z := make([]byte, size)
			if _, err := io.ReadFull(r, z); err != nil {
				return written, fmt.Errorf("short grain at sector %d", val)
			}
			if pad := (soSector - (12+size)%soSector) % soSector; pad > 0 {
				if _, err := io.CopyN(ioutil.Discard, r, pad); err != nil {
					return written, err
				}
			}
			off := val * soSector
			if off%grain != 0 || off >= capacity {
				return written, fmt.Errorf("grain at sector %d: misaligned or outside the disk", val)
			}
			zr, err := zlib.NewReader(bytes.NewReader(z))
			if err != nil {
				return written, fmt.Errorf("grain at sector %d: %v", val, err)
			}
			data, err := ioutil.ReadAll(io.LimitReader(zr, grain+1))
			if err != nil || int64(len(data)) > grain || off+int64(len(data)) > capacity {
				return written, fmt.Errorf("grain at sector %d: bad deflate data or size", val)
			}
			d.mu.Lock()
			err = d.writeAt(data, off, false)
			d.mu.Unlock()
			if err != nil {
				return written, err
			}
			written += int64(len(data))
			continue
		}
		rest := make([]byte, soSector-12)
		if _, err := io.ReadFull(r, rest); err != nil {
			return written, fmt.Errorf("short marker")
		}
		switch le.Uint32(rest[0:]) {
		case 0: // end of stream
			return written, nil
		case 1, 2: // grain table, grain directory: skip (grains carry their own offsets)
			if _, err := io.CopyN(ioutil.Discard, r, val*soSector); err != nil {
				return written, fmt.Errorf("short table")
			}
		case 3: // footer
			f := make([]byte, soSector)
			if _, err := io.ReadFull(r, f); err != nil || le.Uint32(f[0:]) != 0x564D444B {
				return written, fmt.Errorf("bad footer")
			}
		default:
			return written, fmt.Errorf("unknown marker type %d", le.Uint32(rest[0:]))
		}
	}
}

// adoptAttachedDisks makes disks added by ReconfigVM with an existing file (e.g. a restored disk
// attached to a running VM) lab disks. Called with vm.st.mu held.
func (vm *VM) adoptAttachedDisks() {
	lab := vm.lab()
	for _, dev := range vm.Config.Hardware.Device {
		disk, ok := dev.(*types.VirtualDisk)
		if !ok || vm.disk(disk.Key) != nil || vm.hotAdded(disk.Key) {
			continue
		}
		b, compat, ok := flatView(disk.Backing) // rdm.go
		if !ok {
			continue
		}
		dsName, rel := splitDSPath(b.FileName)
		dir := lab.dsDirs[dsName]
		if dir == "" {
			continue
		}
		mode := rdmMode(b.FileName, compat) // rdm.go
		if err := mapLUN(filepath.Join(dir, rel), mode); err != nil {
			log.Printf("attach %s: %v", b.FileName, err)
			continue
		}
		base, err := openBaseLayer(dsName, dir, rel)
		if err != nil {
			log.Printf("attach %s: %v", b.FileName, err)
			continue
		}
		capacity := disk.CapacityInBytes
		if fi, err := base.flat.Stat(); err == nil && capacity == 0 {
			capacity = fi.Size()
		}
		// the file's provisioning, not what the attaching spec claims (ESX reports the file's)
		thin, eager, known := fileProvisioning(filepath.Join(dir, rel))
		if !known {
			thin, eager = b.ThinProvisioned != nil && *b.ThinProvisioned, b.EagerlyScrub != nil && *b.EagerlyScrub
		}
		vm.st.disks = append(vm.st.disks, &Disk{Key: disk.Key, Capacity: capacity, Thin: thin,
			EagerZeroed: eager,
			Independent: strings.HasPrefix(b.DiskMode, "independent"), MultiWriter: b.Sharing == sharing(true),
			RDM: mode, KeyID: b.KeyId, UUID: diskUUID(b), layers: []*layer{base}})
	}
}

// datastoreAllocated is the bytes allocated on disk under each datastore directory.
func (lab *Lab) datastoreAllocated() map[string]int64 {
	out := map[string]int64{}
	for name, dir := range lab.dsDirs {
		var sum int64
		_ = filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
			if err == nil && fi.Mode().IsRegular() {
				sum += allocated(p)
			}
			return nil
		})
		out[name] = sum
	}
	return out
}

// detachDisk forgets a lab disk removed by ReconfigVM (its files stay unless the remove also
// destroys them, which vcsim then does). Only base disks without snapshots can be detached.
// Called with vm.st.mu held; reports whether the removal may go ahead.
func (vm *VM) detachDisk(d *Disk, fileOp types.VirtualDeviceConfigSpecFileOperation) bool {
	if len(d.layers) != 1 || len(vm.st.snaps) > 0 {
		return false
	}
	d.mu.Lock()
	d.layers[0].close()
	d.mu.Unlock()
	var keep []*Disk
	for _, x := range vm.st.disks {
		if x != d {
			keep = append(keep, x)
		}
	}
	vm.st.disks = keep
	return true
}

// afterReconfigure runs after every ReconfigVM (called with vm.st.mu held): attached disks
// become lab disks, and extraConfig gets ESX's semantics (vcsim appends duplicates): the last
// value of a key wins, an empty value removes the key.
func (vm *VM) afterReconfigure() {
	vm.adoptAttachedDisks()
	defer vm.refreshDatastores() // diskmove.go: a disk attached from another datastore uses it
	var keys []string
	last := map[string]types.BaseOptionValue{}
	for _, o := range vm.Config.ExtraConfig {
		k := o.GetOptionValue().Key
		if _, seen := last[k]; !seen {
			keys = append(keys, k)
		}
		last[k] = o
	}
	var out []types.BaseOptionValue
	for _, k := range keys {
		if v, ok := last[k].GetOptionValue().Value.(string); ok && v == "" {
			continue
		}
		out = append(out, last[k])
	}
	vm.Config.ExtraConfig = out
}
