package main

// Admin API for tests and the `vmkeep lab` CLI, under /vmkeep-lab/ (HTTP basic auth with the
// lab's credentials). JSON in and out unless stated.
//
//	GET    /vmkeep-lab/status                      inventory + per-VM disk chains and snapshots,
//	                     datastore_allocated (bytes allocated on disk per datastore; nfc_import.go)
//	(outside this API: PUT/POST /nfc/<lease>/<disk file> receives NFC import uploads, nfc_import.go)
//	GET    /vmkeep-lab/faults                      list rules
//	POST   /vmkeep-lab/faults                      add a rule (faultRule JSON)
//	DELETE /vmkeep-lab/faults[?kind=K]             clear rules
//	POST   /vmkeep-lab/sessions/expire             every current session becomes NotAuthenticated
//	POST   /vmkeep-lab/hosts/disconnect?host=H     (and /hosts/connect)
//	POST   /vmkeep-lab/write?vm=&disk=&percent=&seed=   random guest writes; returns the extents
//	                     (…&offset=&length=: one write of random bytes at exactly that place;
//	                     …&trim=1: the guest trims (UNMAP) those areas instead, see trim.go)
//	POST   /vmkeep-lab/put-file?vm=&path=[&overwrite=1] body = file content
//	GET    /vmkeep-lab/get-file?vm=&path=          raw file content
//	GET    /vmkeep-lab/read?vm=&disk=[&snapshot=S]&offset=&length=   raw disk bytes (S: moref or name)
//	GET    /vmkeep-lab/guest?vm=                   recorded guest processes and quiesce events
//	POST   /vmkeep-lab/qcda-page?n=N               max areas per QueryChangedDiskAreas answer
//	POST   /vmkeep-lab/nfc-timeout?seconds=S       import leases without progress for S s time out

import (
	"encoding/json"
	"io/ioutil"
	"math/rand"
	"net/http"
	"strconv"
	"strings"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/types"
)

func (lab *Lab) checkBasicOrCookie(r *http.Request) bool {
	if u, p, ok := r.BasicAuth(); ok {
		return u == lab.spec.User && p == lab.spec.Password
	}
	if c, err := r.Cookie("vmware_soap_session"); err == nil {
		sessions.mu.Lock()
		_, known := sessions.born[c.Value]
		sessions.mu.Unlock()
		return known && !sessions.expired(c.Value)
	}
	return false
}

func writeJSON(w http.ResponseWriter, code int, v interface{}) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

func jsonErr(w http.ResponseWriter, code int, msg string) {
	writeJSON(w, code, map[string]string{"error": msg})
}

type layerDoc struct {
	DatastorePath string `json:"datastore_path"`
	LocalPath     string `json:"local_path"`
	ExtentPath    string `json:"extent_path"`
	Delta         bool   `json:"delta"`
	Format        string `json:"format,omitempty"` // delta format: vmfsSparse | seSparse
}

type diskState struct {
	Key      int32      `json:"key"`
	Capacity int64      `json:"capacity"`
	Chain    []layerDoc `json:"chain"`
	ChangeID string     `json:"change_id,omitempty"`
}

type snapDoc struct {
	Moref     string           `json:"moref"`
	Name      string           `json:"name"`
	ChangeIDs map[int32]string `json:"change_ids"`
	Disks     map[int32]string `json:"disks"`
}

type vmState2 struct {
	ReadyVM
	PowerState string      `json:"power_state"`
	Datastore  string      `json:"datastore"`
	CBT        bool        `json:"cbt"`
	Chains     []diskState `json:"chains"`
	Snapshots  []snapDoc   `json:"snapshots"`
}

func (lab *Lab) status() map[string]interface{} {
	doc := lab.readyDoc()
	var vms []vmState2
	for _, vm := range lab.vmList() {
		s := vmState2{ReadyVM: lab.vmDoc(vm)}
		vm.st.mu.Lock()
		s.PowerState = string(vm.Runtime.PowerState)
		s.Datastore = vm.st.dsName
		s.CBT = vm.cbtEnabled()
		for _, d := range vm.st.disks {
			d.mu.Lock()
			ds := diskState{Key: d.Key, Capacity: d.Capacity}
			if d.cbt != nil {
				ds.ChangeID = d.cbt.changeID()
			}
			for _, l := range d.layers {
				ds.Chain = append(ds.Chain, layerDoc{DatastorePath: l.dsPath(), LocalPath: l.localPath(),
					ExtentPath: l.extentFile(), Delta: l.delta != nil, Format: l.format})
			}
			d.mu.Unlock()
			s.Chains = append(s.Chains, ds)
		}
		for _, rec := range vm.orderedSnaps() {
			sd := snapDoc{Moref: rec.ref.Value, Name: rec.name, ChangeIDs: rec.changeID, Disks: map[int32]string{}}
			for k, l := range rec.frozen {
				sd.Disks[k] = l.dsPath()
			}
			s.Snapshots = append(s.Snapshots, sd)
		}
		vm.st.mu.Unlock()
		vms = append(vms, s)
	}
	return map[string]interface{}{"lab": doc, "vms": vms, "faults": lab.faults.list(),
		"datastore_allocated": lab.datastoreAllocated()}
}

func (lab *Lab) adminHandler(w http.ResponseWriter, r *http.Request) {
	if u, p, ok := r.BasicAuth(); !ok || u != lab.spec.User || p != lab.spec.Password {
		w.Header().Set("WWW-Authenticate", `Basic realm="vmkeep lab"`)
		jsonErr(w, http.StatusUnauthorized, "authentication required")
		return
	}
	q := r.URL.Query()
	op := strings.TrimPrefix(r.URL.Path, "/vmkeep-lab/")
	var vm *VM
	if n := q.Get("vm"); n != "" {
		vm = lab.vmNamed(n)
		if vm == nil {
			jsonErr(w, http.StatusNotFound, "no such VM: "+n)
			return
		}
	}
	needVM := map[string]bool{"write": true, "put-file": true, "get-file": true, "read": true, "guest": true}
	if needVM[op] && vm == nil {
		jsonErr(w, http.StatusBadRequest, "vm= is required")
		return
	}
	switch op {
	case "status":
		writeJSON(w, 200, lab.status())
	case "faults":
		switch r.Method {
		case http.MethodGet:
			writeJSON(w, 200, lab.faults.list())
		case http.MethodPost:
			var rule faultRule
			if err := json.NewDecoder(r.Body).Decode(&rule); err != nil || rule.Kind == "" {
				jsonErr(w, 400, "bad fault rule")
				return
			}
			if rule.Kind == "session_expire" {
				sessions.expireAll()
				writeJSON(w, 200, rule)
				return
			}
			if rule.Kind == "host_disconnect" {
				if err := lab.setHostConnected(rule.Target, false); err != "" {
					jsonErr(w, 404, err)
					return
				}
				writeJSON(w, 200, rule)
				return
			}
			added := lab.faults.add(rule)
			if rule.Kind == "ds_full" {
				lab.applyDatastoreSpace() // dsspace.go
			}
			writeJSON(w, 200, added)
		case http.MethodDelete:
			lab.faults.clear(q.Get("kind"))
			lab.applyDatastoreSpace()
			if q.Get("kind") == "" || q.Get("kind") == "host_disconnect" {
				for _, h := range lab.hosts {
					lab.setHostConnected(h.Name, true)
				}
			}
			writeJSON(w, 200, map[string]bool{"ok": true})
		}
	case "sessions/expire":
		sessions.expireAll()
		writeJSON(w, 200, map[string]bool{"ok": true})
	case "hosts/disconnect", "hosts/connect":
		if err := lab.setHostConnected(q.Get("host"), op == "hosts/connect"); err != "" {
			jsonErr(w, 404, err)
			return
		}
		writeJSON(w, 200, map[string]bool{"ok": true})
	case "nfc-timeout":
		lab.adminNfcTimeout(w, q)
	case "qcda-page":
		n, _ := strconv.Atoi(q.Get("n"))
		if n <= 0 {
			n = 2000
		}
		lab.mu.Lock()
		lab.page = n
		lab.mu.Unlock()
		writeJSON(w, 200, map[string]int{"page": n})
	case "write":
		lab.adminWrite(w, vm, q)
	case "put-file":
		data, err := ioutil.ReadAll(r.Body)
		if err != nil {
			jsonErr(w, 400, err.Error())
			return
		}
		if err := vm.writeGuestFile(q.Get("path"), data, q.Get("overwrite") != "0"); err != nil {
			jsonErr(w, 500, err.Error())
			return
		}
		writeJSON(w, 200, map[string]interface{}{"ok": true, "bytes": len(data)})
	case "get-file":
		data, err := vm.readGuestFile(q.Get("path"))
		if err != nil {
			jsonErr(w, 404, err.Error())
			return
		}
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Write(data)
	case "read":
		lab.adminRead(w, vm, q)
	case "guest":
		vm.st.mu.Lock()
		doc := map[string]interface{}{"processes": vm.st.procs, "quiesce": vm.st.quiesces}
		data, _ := json.Marshal(doc)
		vm.st.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		w.Write(data)
	default:
		if lab.nfcAdmin(w, r, op) { // nfc_export.go
			return
		}
		jsonErr(w, 404, "unknown admin operation "+op)
	}
}

func (lab *Lab) setHostConnected(name string, connected bool) string {
	for _, h := range lab.hosts {
		if h.Name != name {
			continue
		}
		state := types.HostSystemConnectionStateConnected
		vmState := types.VirtualMachineConnectionStateConnected
		if !connected {
			state = types.HostSystemConnectionStateDisconnected
			vmState = types.VirtualMachineConnectionStateDisconnected
		}
		lab.mu.Lock()
		lab.down[h.Self.Value] = !connected
		lab.mu.Unlock()
		simulator.Map.WithLock(h, func() {
			simulator.Map.Update(h, []types.PropertyChange{
				{Name: "runtime.connectionState", Val: state},
				{Name: "summary.runtime.connectionState", Val: state},
			})
		})
		for _, vm := range lab.vmList() {
			if vm.Runtime.Host != nil && *vm.Runtime.Host == h.Self {
				simulator.Map.Update(&vm.VirtualMachine, []types.PropertyChange{
					{Name: "runtime.connectionState", Val: vmState},
					{Name: "summary.runtime.connectionState", Val: vmState},
				})
			}
		}
		return ""
	}
	return "no such host: " + name
}

func (lab *Lab) diskArg(vm *VM, q map[string][]string) (*Disk, string) {
	n, _ := strconv.Atoi(first(q["disk"]))
	if n < 0 || n >= len(vm.st.disks) {
		return nil, "no such disk"
	}
	return vm.st.disks[n], ""
}

func first(v []string) string {
	if len(v) == 0 {
		return ""
	}
	return v[0]
}

func (lab *Lab) adminWrite(w http.ResponseWriter, vm *VM, q map[string][]string) {
	d, e := lab.diskArg(vm, q)
	if d == nil {
		jsonErr(w, 400, e)
		return
	}
	pct, _ := strconv.ParseFloat(first(q["percent"]), 64)
	seed, _ := strconv.ParseInt(first(q["seed"]), 10, 64)
	rng := rand.New(rand.NewSource(seed))
	d.mu.Lock()
	defer d.mu.Unlock()
	if first(q["trim"]) == "1" { // guest UNMAP instead of writes (trim.go)
		lab.adminTrim(w, d, q, rng)
		return
	}
	if at := first(q["offset"]); at != "" { // one write of length= random bytes at offset=
		off, _ := strconv.ParseInt(at, 10, 64)
		n, _ := strconv.ParseInt(first(q["length"]), 10, 64)
		if off < 0 || n <= 0 || off+n > d.Capacity {
			jsonErr(w, 400, "offset/length outside the disk")
			return
		}
		buf := make([]byte, n)
		rng.Read(buf)
		if err := d.writeAt(buf, off, true); err != nil {
			jsonErr(w, 500, err.Error())
			return
		}
		writeJSON(w, 200, map[string]interface{}{"extents": [][2]int64{{off, n}}, "bytes": n})
		return
	}
	total := int64(float64(d.Capacity) * pct / 100)
	const align = 4096
	var out [][2]int64
	var written int64
	for written < total {
		n := (1 + rng.Int63n(64)) * align * 4 // 16 KiB .. 1 MiB
		if n > total-written {
			n = (total - written + align - 1) / align * align
		}
		if n > d.Capacity {
			n = d.Capacity / align * align
		}
		off := rng.Int63n((d.Capacity-n)/align+1) * align
		buf := make([]byte, n)
		rng.Read(buf)
		if err := d.writeAt(buf, off, true); err != nil {
			jsonErr(w, 500, err.Error())
			return
		}
		out = append(out, [2]int64{off, n})
		written += n
	}
	writeJSON(w, 200, map[string]interface{}{"extents": out, "bytes": written})
}

func (lab *Lab) adminRead(w http.ResponseWriter, vm *VM, q map[string][]string) {
	d, e := lab.diskArg(vm, q)
	if d == nil {
		jsonErr(w, 400, e)
		return
	}
	vm.st.mu.Lock()
	var frozen *layer
	if s := first(q["snapshot"]); s != "" {
		for _, rec := range vm.st.snaps {
			if rec.ref.Value == s || rec.name == s {
				frozen = rec.frozen[d.Key]
			}
		}
		if frozen == nil {
			vm.st.mu.Unlock()
			jsonErr(w, 404, "no such snapshot: "+s)
			return
		}
	}
	vm.st.mu.Unlock()
	d.mu.Lock()
	defer d.mu.Unlock()
	upto := len(d.layers) - 1
	if frozen != nil {
		upto = d.layerIndex(frozen)
	}
	off, _ := strconv.ParseInt(first(q["offset"]), 10, 64)
	length, err := strconv.ParseInt(first(q["length"]), 10, 64)
	if err != nil || length <= 0 || off+length > d.Capacity {
		length = d.Capacity - off
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Length", strconv.FormatInt(length, 10))
	buf := make([]byte, 1<<20)
	for length > 0 {
		n := int64(len(buf))
		if n > length {
			n = length
		}
		if err := d.readAt(buf[:n], off, upto); err != nil {
			return
		}
		if _, err := w.Write(buf[:n]); err != nil {
			return
		}
		off += n
		length -= n
	}
}
