package main

// NFC export leases: VirtualMachine.ExportVm (powered-off VMs, as on vSphere) and
// VirtualMachineSnapshot.ExportSnapshot return an HttpNfcLease (state "ready") whose device
// URLs (https://*/nfc-export/<lease>/disk-<n>.vmdk; "*" stands for the host the client talks
// to, as vCenter writes it) serve each disk as a streamOptimized VMDK built on the fly from
// the lab's view of the disk (the snapshot's frozen chain for ExportSnapshot). GETs need the
// session cookie (or the lab's basic credentials). The stream is sequential, chunked, without
// Content-Length, like hostd's NFC export.
//
// streamOptimized (VMware "Virtual Disk Format 5.0", monolithic sparse; what qemu's
// block/vmdk.c and govmomi's vmdk package read): a 512-byte sparse header (magic KDMV,
// version 3, flags 0x30001 = valid newline test | compressed grains | markers, gdOffset
// GD_AT_END), the embedded descriptor (createType="streamOptimized"), grains of 128 sectors
// each as {lba u64, size u32, zlib data} padded to a sector (all-zero grains are left out),
// after each grain table's grains a GT marker {4, 0, type 1} + the table (512 u32 sector
// offsets of the grain markers), then a GD marker {n, 0, 2} + the directory, a footer marker
// {1, 0, 3} + the header again with gdOffset set, and the end-of-stream marker (a zero sector).
//
// Lease life: ready → done (HttpNfcLeaseComplete) | error (HttpNfcLeaseAbort; the idle
// timeout: no HttpNfcLeaseProgress for Info.LeaseTimeout seconds, 300 by default; or an
// injected fault). A lease that leaves "ready" stops its streams at once (the connection is
// dropped mid-body) and its URLs answer 404. Calls on a lease in error answer its fault.
//
// Faults (target = VM name): nfc_abort (bytes: the lease is cancelled after that many body
// bytes of a disk stream), nfc_timeout (bytes: the lease times out there), nfc_corrupt (the
// stream's first grain marker names a sector that is not a grain boundary: a hostile stream),
// nfc_keys (device URL keys "/vm-N/device-<i>": a form vmkeep cannot map to a disk slot).
// Admin: GET /vmkeep-lab/nfc/leases (every lease: state, progress, calls, bytes served);
// POST /vmkeep-lab/nfc/lease-timeout?seconds=N (idle timeout of new leases).

import (
	"bytes"
	"compress/zlib"
	"encoding/binary"
	"fmt"
	"net/http"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
)

const (
	soMagic        = 0x564d444b // "KDMV" little-endian
	soGrainSecs    = 128
	soGTEs         = 512
	soOverheadSecs = 128
	soMarkerEOS    = 0
	soMarkerGT     = 1
	soMarkerGD     = 2
	soMarkerFooter = 3
	nfcPrefix      = "/nfc-export/"
)

type exportDisk struct {
	disk   *Disk
	frozen *layer // nil: the current top (ExportVm)
	id     string // disk-0.vmdk
}

type exportLease struct {
	mo.HttpNfcLease
	lab   *Lab
	vm    *VM
	disks []exportDisk

	mu       sync.Mutex
	timer    *time.Timer
	stop     chan struct{} // closed when the lease leaves "ready"
	calls    int           // HttpNfcLeaseProgress calls
	served   int64
	outcome  string // ready | done | aborted | timeout
	lastSeen time.Time
	seq      int
}

var (
	leasesMu     sync.Mutex
	leases       = map[string]*exportLease{}
	leaseSeq     int
	leaseTimeout = 300 // seconds
)

func (vm *VM) ExportVm(ctx *simulator.Context, req *types.ExportVm) soap.HasFault {
	if vm.Runtime.PowerState != types.VirtualMachinePowerStatePoweredOff {
		return &methods.ExportVmBody{Fault_: simulator.Fault("The attempted operation cannot be performed in the current state (Powered on).",
			&types.InvalidPowerState{RequestedState: types.VirtualMachinePowerStatePoweredOff, ExistingState: vm.Runtime.PowerState})}
	}
	vm.st.mu.Lock()
	if f := encryptedExportFault(vm); f != nil { // crypto.go
		vm.st.mu.Unlock()
		return &methods.ExportVmBody{Fault_: simulator.Fault(f.msg, f.fault)}
	}
	var disks []exportDisk
	for _, d := range vm.st.disks {
		disks = append(disks, exportDisk{disk: d})
	}
	vm.st.mu.Unlock()
	l := vm.lab().newExportLease(vm, vm.Self, disks)
	return &methods.ExportVmBody{Res: &types.ExportVmResponse{Returnval: l.Self}}
}

func (s *Snapshot) ExportSnapshot(ctx *simulator.Context, req *types.ExportSnapshot) soap.HasFault {
	vm := s.vm
	vm.st.mu.Lock()
	if f := encryptedExportFault(vm); f != nil { // crypto.go
		vm.st.mu.Unlock()
		return &methods.ExportSnapshotBody{Fault_: simulator.Fault(f.msg, f.fault)}
	}
	var rec *snapRec
	for _, r := range vm.st.snaps {
		if r.ref == s.Self {
			rec = r
		}
	}
	var disks []exportDisk
	if rec != nil {
		for _, d := range vm.st.disks {
			if f := rec.frozen[d.Key]; f != nil {
				disks = append(disks, exportDisk{disk: d, frozen: f})
			}
		}
	}
	vm.st.mu.Unlock()
	if rec == nil {
		return &methods.ExportSnapshotBody{Fault_: simulator.Fault("The object has already been deleted or has not been completely created",
			&types.ManagedObjectNotFound{Obj: s.Self})}
	}
	l := vm.lab().newExportLease(vm, vm.Self, disks) // info.entity is a ManagedEntity: the VM
	return &methods.ExportSnapshotBody{Res: &types.ExportSnapshotResponse{Returnval: l.Self}}
}

func (lab *Lab) newExportLease(vm *VM, entity types.ManagedObjectReference, disks []exportDisk) *exportLease {
	leasesMu.Lock()
	leaseSeq++
	id := fmt.Sprintf("%s-%d", newUUID(), leaseSeq)
	timeout := leaseTimeout
	leasesMu.Unlock()
	l := &exportLease{lab: lab, vm: vm, stop: make(chan struct{}), outcome: "ready", lastSeen: time.Now()}
	leasesMu.Lock()
	l.seq = leaseSeq
	leasesMu.Unlock()
	l.Self = types.ManagedObjectReference{Type: "HttpNfcLease", Value: id}
	info := &types.HttpNfcLeaseInfo{Lease: l.Self, Entity: entity, LeaseTimeout: int32(timeout)}
	for i := range disks {
		disks[i].id = fmt.Sprintf("disk-%d.vmdk", i)
		d := disks[i].disk
		info.TotalDiskCapacityInKB += d.Capacity / 1024
		slot := vm.diskSlot(d.Key)
		if lab.faults.peek("nfc_keys", vm.Name) != nil { // keys in a form vmkeep does not parse
			slot = fmt.Sprintf("device-%d", i)
		}
		info.DeviceUrl = append(info.DeviceUrl, types.HttpNfcLeaseDeviceUrl{
			Key:           fmt.Sprintf("/%s/%s", vm.Self.Value, slot),
			ImportKey:     fmt.Sprintf("/%s/%s", vm.Name, slot),
			Url:           lab.nfcURLOn(vm.Runtime.Host, fmt.Sprintf("%s%s/%s", nfcPrefix, id, disks[i].id)),
			SslThumbprint: lab.hostThumbprint(vm.Runtime.Host),
			Disk:          types.NewBool(true),
			TargetId:      disks[i].id,
		})
	}
	l.disks = disks
	l.Info = info
	l.State = types.HttpNfcLeaseStateReady
	l.InitializeProgress = 100
	l.TransferProgress = 0
	l.Mode = "pull"
	simulator.Map.Put(l)
	l.timer = time.AfterFunc(time.Duration(timeout)*time.Second, func() {
		l.finish("timeout", &types.Timedout{}, "The HttpNfcLease has timed out (no progress update).")
	})
	leasesMu.Lock()
	leases[id] = l
	leasesMu.Unlock()
	return l
}

// diskSlot names a disk as vSphere's lease device keys do: the controller's type and bus
// number, then the unit number ("VirtualLsiLogicController0:0", "ParaVirtualSCSIController0:1").
func (vm *VM) diskSlot(key int32) string {
	devs := object.VirtualDeviceList(vm.Config.Hardware.Device)
	for _, dev := range devs {
		disk, ok := dev.(*types.VirtualDisk)
		if !ok || disk.Key != key {
			continue
		}
		unit := int32(0)
		if disk.UnitNumber != nil {
			unit = *disk.UnitNumber
		}
		if c := devs.FindByKey(disk.ControllerKey); c != nil {
			bus := int32(0)
			if bc, ok := c.(types.BaseVirtualController); ok {
				bus = bc.GetVirtualController().BusNumber
			}
			return fmt.Sprintf("%s%d:%d", reflect.TypeOf(c).Elem().Name(), bus, unit)
		}
		return fmt.Sprintf("VirtualDisk%d:%d", disk.ControllerKey, unit)
	}
	return fmt.Sprintf("disk%d", key)
}

// finish moves a ready lease to done or error; false when it had already left "ready".
func (l *exportLease) finish(outcome string, f types.BaseMethodFault, msg string) bool {
	l.mu.Lock()
	if l.outcome != "ready" {
		l.mu.Unlock()
		return false
	}
	l.outcome = outcome
	l.timer.Stop()
	close(l.stop)
	l.mu.Unlock()
	simulator.Map.WithLock(l, func() { l.setState(f, msg) })
	return true
}

// setState records the final state; caller holds the registry lock of l.
func (l *exportLease) setState(f types.BaseMethodFault, msg string) {
	if f == nil {
		l.State = types.HttpNfcLeaseStateDone
		return
	}
	l.State = types.HttpNfcLeaseStateError
	l.Error = &types.LocalizedMethodFault{Fault: f, LocalizedMessage: msg}
}

func (l *exportLease) faultBody(f types.BaseMethodFault) *soap.Fault {
	l.mu.Lock()
	outcome := l.outcome
	l.mu.Unlock()
	switch outcome {
	case "timeout":
		return simulator.Fault("The HttpNfcLease has timed out.", &types.Timedout{})
	case "ready":
		return nil
	}
	return simulator.Fault(fmt.Sprintf("The lease is %s.", outcome), &types.InvalidState{})
}

func (l *exportLease) HttpNfcLeaseProgress(ctx *simulator.Context, req *types.HttpNfcLeaseProgress) soap.HasFault {
	if f := l.faultBody(nil); f != nil {
		return &methods.HttpNfcLeaseProgressBody{Fault_: f}
	}
	l.mu.Lock()
	l.calls++
	l.lastSeen = time.Now()
	l.timer.Reset(time.Duration(l.Info.LeaseTimeout) * time.Second)
	l.mu.Unlock()
	l.TransferProgress = req.Percent
	return &methods.HttpNfcLeaseProgressBody{Res: &types.HttpNfcLeaseProgressResponse{}}
}

func (l *exportLease) HttpNfcLeaseComplete(ctx *simulator.Context, req *types.HttpNfcLeaseComplete) soap.HasFault {
	l.mu.Lock()
	ok := l.outcome == "ready"
	if ok {
		l.outcome = "done"
		l.timer.Stop()
		close(l.stop)
	}
	l.mu.Unlock()
	if !ok {
		return &methods.HttpNfcLeaseCompleteBody{Fault_: l.faultBody(nil)}
	}
	l.setState(nil, "") // the registry lock is held by the dispatcher
	l.TransferProgress = 100
	return &methods.HttpNfcLeaseCompleteBody{Res: &types.HttpNfcLeaseCompleteResponse{}}
}

func (l *exportLease) HttpNfcLeaseAbort(ctx *simulator.Context, req *types.HttpNfcLeaseAbort) soap.HasFault {
	l.mu.Lock()
	ok := l.outcome == "ready"
	if ok {
		l.outcome = "aborted"
		l.timer.Stop()
		close(l.stop)
	}
	l.mu.Unlock()
	if !ok {
		if l.outcome == "aborted" {
			return &methods.HttpNfcLeaseAbortBody{Res: &types.HttpNfcLeaseAbortResponse{}}
		}
		return &methods.HttpNfcLeaseAbortBody{Fault_: l.faultBody(nil)}
	}
	var f types.BaseMethodFault = &types.RequestCanceled{}
	if req.Fault != nil && req.Fault.Fault != nil {
		f = req.Fault.Fault
	}
	l.setState(f, "The operation was aborted by the client.")
	return &methods.HttpNfcLeaseAbortBody{Res: &types.HttpNfcLeaseAbortResponse{}}
}

func (l *exportLease) HttpNfcLeaseGetManifest(ctx *simulator.Context, req *types.HttpNfcLeaseGetManifest) soap.HasFault {
	return &methods.HttpNfcLeaseGetManifestBody{Res: &types.HttpNfcLeaseGetManifestResponse{}}
}

// ---- HTTP ---------------------------------------------------------------------------------

func (lab *Lab) serveNFCExport(w http.ResponseWriter, r *http.Request) {
	if !lab.checkBasicOrCookie(r) {
		w.WriteHeader(http.StatusUnauthorized)
		return
	}
	parts := strings.Split(strings.TrimPrefix(r.URL.Path, nfcPrefix), "/")
	if len(parts) != 2 {
		http.NotFound(w, r)
		return
	}
	leasesMu.Lock()
	l := leases[parts[0]]
	leasesMu.Unlock()
	if l == nil {
		http.NotFound(w, r)
		return
	}
	l.mu.Lock()
	ready := l.outcome == "ready"
	l.mu.Unlock()
	var ed *exportDisk
	for i := range l.disks {
		if l.disks[i].id == parts[1] {
			ed = &l.disks[i]
		}
	}
	if !ready || ed == nil {
		http.NotFound(w, r)
		return
	}
	if r.Method != http.MethodGet {
		w.WriteHeader(http.StatusMethodNotAllowed)
		return
	}
	var stopAt int64 = -1
	stopKind := ""
	if rule := lab.faults.take("nfc_abort", l.vm.Name); rule != nil {
		stopAt, stopKind = rule.Bytes, "nfc_abort"
	} else if rule := lab.faults.take("nfc_timeout", l.vm.Name); rule != nil {
		stopAt, stopKind = rule.Bytes, "nfc_timeout"
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	sw := &leaseWriter{w: w, l: l, stopAt: stopAt, stopKind: stopKind,
		corrupt: lab.faults.take("nfc_corrupt", l.vm.Name) != nil}
	if err := streamOptimized(sw, ed); err != nil {
		panic(http.ErrAbortHandler) // drop the connection: the client sees a truncated body
	}
}

// leaseWriter counts body bytes, stops when the lease leaves "ready" and applies faults.
type leaseWriter struct {
	w        http.ResponseWriter
	l        *exportLease
	pos      int64
	stopAt   int64
	stopKind string
	corrupt  bool // nfc_corrupt: damage the first grain marker
}

func (s *leaseWriter) Write(p []byte) (int, error) {
	select {
	case <-s.l.stop:
		return 0, fmt.Errorf("lease is no longer ready")
	default:
	}
	if s.stopAt >= 0 && s.pos+int64(len(p)) > s.stopAt {
		n := s.stopAt - s.pos
		if n > 0 {
			s.w.Write(p[:n])
			s.pos += n
		}
		if f, ok := s.w.(http.Flusher); ok {
			f.Flush()
		}
		if s.stopKind == "nfc_timeout" {
			s.l.finish("timeout", &types.Timedout{}, "The HttpNfcLease has timed out (no progress update).")
		} else {
			s.l.finish("aborted", &types.RequestCanceled{}, "The task was canceled by a user.")
		}
		return int(n), fmt.Errorf("lease stopped by an injected fault")
	}
	n, err := s.w.Write(p)
	s.pos += int64(n)
	s.l.mu.Lock()
	s.l.served += int64(n)
	s.l.mu.Unlock()
	return n, err
}

// sectorWriter tracks the output position in sectors.
type sectorWriter struct {
	w   *leaseWriter
	pos int64
	err error
}

func (s *sectorWriter) write(p []byte) {
	if s.err != nil {
		return
	}
	n, err := s.w.Write(p)
	s.pos += int64(n)
	s.err = err
}

func (s *sectorWriter) pad() {
	if r := s.pos % sectorSize; r != 0 {
		s.write(make([]byte, sectorSize-r))
	}
}

func (s *sectorWriter) sector() uint64 { return uint64(s.pos / sectorSize) }

func (s *sectorWriter) marker(val uint64, typ uint32) {
	m := make([]byte, sectorSize)
	binary.LittleEndian.PutUint64(m[0:], val)
	binary.LittleEndian.PutUint32(m[12:], typ)
	s.write(m)
}

func soHeader(capSecs, descSecs, gdOffset uint64) []byte {
	h := make([]byte, sectorSize)
	le := binary.LittleEndian
	le.PutUint32(h[0:], soMagic)
	le.PutUint32(h[4:], 3)
	le.PutUint32(h[8:], 0x30001)
	le.PutUint64(h[12:], capSecs)
	le.PutUint64(h[20:], soGrainSecs)
	le.PutUint64(h[28:], 1)
	le.PutUint64(h[36:], descSecs)
	le.PutUint32(h[44:], soGTEs)
	le.PutUint64(h[48:], 0)
	le.PutUint64(h[56:], gdOffset)
	le.PutUint64(h[64:], soOverheadSecs)
	copy(h[73:77], "\n \r\n")
	le.PutUint16(h[77:], 1) // deflate
	return h
}

// streamOptimized writes disk ed as a streamOptimized VMDK (see the file comment).
func streamOptimized(lw *leaseWriter, ed *exportDisk) error {
	d := ed.disk
	capSecs := uint64((d.Capacity + sectorSize - 1) / sectorSize)
	desc := fmt.Sprintf("# Disk DescriptorFile\nversion=1\nCID=%08x\nparentCID=ffffffff\ncreateType=\"streamOptimized\"\n\n"+
		"# Extent description\nRW %d SPARSE \"%s\"\n\n# The Disk Data Base\n#DDB\n\nddb.adapterType = \"lsilogic\"\n"+
		"ddb.virtualHWVersion = \"14\"\nddb.uuid = \"%s\"\n", randCID(), capSecs, ed.id, d.UUID)
	descSecs := uint64((len(desc) + sectorSize - 1) / sectorSize)
	s := &sectorWriter{w: lw}
	s.write(soHeader(capSecs, descSecs, ^uint64(0)))
	s.write([]byte(desc))
	s.write(make([]byte, soOverheadSecs*sectorSize-int(s.pos)))

	grainBytes := int64(soGrainSecs * sectorSize)
	nGrains := (d.Capacity + grainBytes - 1) / grainBytes
	nGTs := (nGrains + soGTEs - 1) / soGTEs
	gd := make([]uint32, nGTs)
	buf := make([]byte, 16*grainBytes)
	var comp bytes.Buffer
	zw, _ := zlib.NewWriterLevel(&comp, zlib.BestSpeed)
	for gt := int64(0); gt < nGTs && s.err == nil; gt++ {
		table := make([]uint32, soGTEs)
		used := false
		for g0 := gt * soGTEs; g0 < (gt+1)*soGTEs && g0 < nGrains && s.err == nil; g0 += 16 {
			if err := readExport(ed, buf, g0*grainBytes); err != nil {
				return err
			}
			for i := int64(0); i < 16 && g0+i < nGrains && g0+i < (gt+1)*soGTEs; i++ {
				grain := buf[i*grainBytes : (i+1)*grainBytes]
				if isZero(grain) {
					continue
				}
				comp.Reset()
				zw.Reset(&comp)
				zw.Write(grain)
				zw.Close()
				table[(g0+i)%soGTEs] = uint32(s.sector())
				used = true
				hdr := make([]byte, 12)
				lba := uint64((g0 + i) * soGrainSecs)
				if lw.corrupt {
					lba, lw.corrupt = lba+1, false
				}
				binary.LittleEndian.PutUint64(hdr[0:], lba)
				binary.LittleEndian.PutUint32(hdr[8:], uint32(comp.Len()))
				s.write(hdr)
				s.write(comp.Bytes())
				s.pad()
			}
		}
		if !used {
			continue
		}
		s.marker(soGTEs*4/sectorSize, soMarkerGT)
		gd[gt] = uint32(s.sector())
		tb := make([]byte, soGTEs*4)
		for i, v := range table {
			binary.LittleEndian.PutUint32(tb[i*4:], v)
		}
		s.write(tb)
	}
	gdBytes := make([]byte, (len(gd)*4+sectorSize-1)/sectorSize*sectorSize)
	for i, v := range gd {
		binary.LittleEndian.PutUint32(gdBytes[i*4:], v)
	}
	s.marker(uint64(len(gdBytes)/sectorSize), soMarkerGD)
	gdOffset := s.sector()
	s.write(gdBytes)
	s.marker(1, soMarkerFooter)
	s.write(soHeader(capSecs, descSecs, gdOffset))
	s.marker(0, soMarkerEOS)
	return s.err
}

// readExport reads the disk as the lease sees it: the snapshot's frozen chain or the top.
func readExport(ed *exportDisk, p []byte, off int64) error {
	d := ed.disk
	d.mu.Lock()
	defer d.mu.Unlock()
	upto := len(d.layers) - 1
	if ed.frozen != nil {
		if upto = d.layerIndex(ed.frozen); upto < 0 {
			return fmt.Errorf("the snapshot's disk is gone")
		}
	}
	return d.readAt(p, off, upto)
}

func isZero(p []byte) bool {
	for _, b := range p {
		if b != 0 {
			return false
		}
	}
	return true
}

// ---- admin --------------------------------------------------------------------------------

type leaseDoc struct {
	ID       string `json:"id"`
	VM       string `json:"vm"`
	Entity   string `json:"entity"`
	State    string `json:"state"`
	Outcome  string `json:"outcome"`
	Progress int32  `json:"progress"`
	Calls    int    `json:"progress_calls"`
	Served   int64  `json:"bytes_served"`
}

// nfcAdmin answers the admin API's nfc/ operations; false for other operations.
func (lab *Lab) nfcAdmin(w http.ResponseWriter, r *http.Request, op string) bool {
	switch op {
	case "nfc/leases":
		leasesMu.Lock()
		var out []leaseDoc
		ids := make([]string, 0, len(leases))
		for id := range leases {
			ids = append(ids, id)
		}
		sort.Slice(ids, func(i, j int) bool { return leases[ids[i]].seq < leases[ids[j]].seq })
		for _, id := range ids {
			l := leases[id]
			l.mu.Lock()
			doc := leaseDoc{ID: id, VM: l.vm.Name, Entity: l.Info.Entity.Value, Outcome: l.outcome,
				Calls: l.calls, Served: l.served}
			l.mu.Unlock()
			simulator.Map.WithLock(l, func() { doc.State = string(l.State); doc.Progress = l.TransferProgress })
			out = append(out, doc)
		}
		leasesMu.Unlock()
		if out == nil {
			out = []leaseDoc{}
		}
		writeJSON(w, 200, out)
	case "nfc/lease-timeout":
		n, err := strconv.Atoi(r.URL.Query().Get("seconds"))
		if err != nil || n <= 0 {
			jsonErr(w, 400, "seconds=N (N > 0) is required")
			return true
		}
		leasesMu.Lock()
		leaseTimeout = n
		leasesMu.Unlock()
		writeJSON(w, 200, map[string]int{"seconds": n})
	default:
		return false
	}
	return true
}
