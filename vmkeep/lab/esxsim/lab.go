package main

// Lab: inventory construction from the spec, helpers shared by the other files.

import (
	"context"
	"crypto/sha1"
	"fmt"
	"net/http"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"sync"

	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"
)

var osRemove = os.Remove

type Lab struct {
	spec       *Spec
	tagHandler http.Handler // the vAPI tagging service (tagging.go)
	model      *simulator.Model
	client     *vim25.Client
	url        string
	port       int
	thumbprint string
	dcName     string
	datastores map[string]*simulator.Datastore
	dsDirs     map[string]string
	dsTypes    map[string]string // datastore name -> VMFS | NFS
	hosts      []*simulator.HostSystem
	vms        map[string]*VM // by name
	vmOrder    []string
	faults     *faultSet
	mu         sync.Mutex
	vmsMu      sync.RWMutex
	down       map[string]bool // host moref value -> disconnected
	page       int
}

func newLab(spec *Spec, model *simulator.Model, client *vim25.Client) *Lab {
	return &Lab{spec: spec, model: model, client: client, datastores: map[string]*simulator.Datastore{},
		dsDirs: map[string]string{}, dsTypes: map[string]string{}, vms: map[string]*VM{}, faults: newFaultSet(), down: map[string]bool{}, page: 2000}
}

func (lab *Lab) vmNamed(name string) *VM {
	lab.vmsMu.RLock()
	defer lab.vmsMu.RUnlock()
	if vm := lab.vms[name]; vm != nil {
		return vm
	}
	return lab.vms[escapeName(name)] // the plain name of a VM stored escaped (rename.go)
}

func (lab *Lab) vmList() []*VM {
	lab.vmsMu.RLock()
	defer lab.vmsMu.RUnlock()
	out := make([]*VM, 0, len(lab.vmOrder))
	for _, n := range lab.vmOrder {
		out = append(out, lab.vms[n])
	}
	return out
}

func (lab *Lab) qcdaPage() int {
	lab.mu.Lock()
	defer lab.mu.Unlock()
	return lab.page
}

func (lab *Lab) hostDown(ref types.ManagedObjectReference) bool {
	lab.mu.Lock()
	defer lab.mu.Unlock()
	return lab.down[ref.Value]
}

// splitDSPath splits "[ds] a/b.vmdk".
func splitDSPath(p string) (string, string) {
	var dp object.DatastorePath
	if !dp.FromString(p) {
		return "", p
	}
	return dp.Datastore, dp.Path
}

// localPath maps a datastore path to the host file.
func (lab *Lab) localPath(p string) string {
	ds, rel := splitDSPath(p)
	return filepath.Join(lab.dsDirs[ds], rel)
}

var hostNames = map[string]string{
	"DC0_C0_H0": "esx01.lab.local",
	"DC0_C0_H1": "esx02.lab.local",
	"DC0_H0":    "esx03.lab.local",
}

func (lab *Lab) build(ctx context.Context) error {
	c := lab.client
	// Rename the model's entities to something that looks like a real site.
	for _, e := range simulator.Map.All("HostSystem") {
		h := e.(*simulator.HostSystem)
		if n, ok := hostNames[h.Name]; ok {
			h.Name = n
			h.Summary.Config.Name = n
		}
		lab.hosts = append(lab.hosts, h)
	}
	sort.Slice(lab.hosts, func(i, j int) bool { return lab.hosts[i].Name < lab.hosts[j].Name })
	for _, e := range simulator.Map.All("ClusterComputeResource") {
		e.(*simulator.ClusterComputeResource).Name = "cluster01"
	}
	for _, e := range simulator.Map.All("Datacenter") {
		dc := e.(*simulator.Datacenter)
		lab.dcName = dc.Name
	}
	if err := lab.registerObjectStores(); err != nil { // vsan.go
		return err
	}
	for _, ds := range lab.spec.Datastores {
		if err := os.MkdirAll(ds.Dir, 0o755); err != nil {
			return err
		}
		lab.dsDirs[ds.Name] = ds.Dir
		lab.dsTypes[ds.Name] = ds.Type
		for _, h := range lab.hosts {
			if !dsVisible(ds, h.Name) {
				continue
			}
			host := object.NewHostSystem(c, h.Self)
			dss, err := host.ConfigManager().DatastoreSystem(ctx)
			if err != nil {
				return err
			}
			if _, err := dss.CreateLocalDatastore(ctx, ds.Name, ds.Dir); err != nil {
				return fmt.Errorf("datastore %s on %s: %v", ds.Name, h.Name, err)
			}
		}
	}
	for _, e := range simulator.Map.All("Datastore") {
		ds := e.(*simulator.Datastore)
		if prev := lab.datastores[ds.Name]; prev == nil {
			lab.datastores[ds.Name] = ds
		}
		ds.Host = nil
		dspec, _ := lab.dsSpec(ds.Name)
		for _, h := range lab.hosts {
			if !dsVisible(dspec, h.Name) {
				continue
			}
			ds.Host = append(ds.Host, types.DatastoreHostMount{Key: h.Self, MountInfo: types.HostMountInfo{
				Path: ds.Info.GetDatastoreInfo().Url, AccessMode: string(types.HostMountModeReadWrite),
				Mounted: types.NewBool(true), Accessible: types.NewBool(true)}})
		}
		ds.Summary.MultipleHostAccess = types.NewBool(len(ds.Host) > 1)
		ds.Summary.Type = lab.dsTypes[ds.Name]
		if ds.Summary.Type == "" {
			ds.Summary.Type = "VMFS"
		}
		ds.Summary.Capacity = defaultDatastoreCapacity // dsspace.go
		ds.Summary.FreeSpace = defaultDatastoreFree
	}
	lab.registerVMFS()
	finder := object.NewSearchIndex(c)
	_ = finder
	var dc mo.Datacenter
	for _, e := range simulator.Map.All("Datacenter") {
		dc = e.(*simulator.Datacenter).Datacenter
	}
	vmFolder := object.NewFolder(c, dc.VmFolder)
	if err := lab.arrangeNetworks(ctx); err != nil { // networks.go
		return err
	}
	if err := lab.addResourcePools(ctx); err != nil { // pools.go
		return err
	}
	for _, vs := range lab.spec.VMs {
		if err := lab.createVM(ctx, vmFolder, vs); err != nil {
			return fmt.Errorf("vm %s: %v", vs.Name, err)
		}
	}
	if err := lab.createLightVMs(ctx, vmFolder); err != nil { // lightvms.go
		return err
	}
	return lab.arrangeDatacenters(ctx) // strict.go
}

func (lab *Lab) hostByName(name string) *simulator.HostSystem {
	for _, h := range lab.hosts {
		if h.Name == name {
			return h
		}
	}
	return lab.hosts[0]
}

func (lab *Lab) createVM(ctx context.Context, folder *object.Folder, vs VMSpec) error {
	c := lab.client
	h := lab.hostByName(vs.Host)
	host := object.NewHostSystem(c, h.Self)
	pool, err := host.ResourcePool(ctx)
	if err != nil {
		return err
	}
	if vs.MemoryMB == 0 {
		vs.MemoryMB = 2048
	}
	if vs.CPUs == 0 {
		vs.CPUs = 2
	}
	home := fmt.Sprintf("[%s] %s/%s.vmx", vs.Datastore, vs.Name, vs.Name)
	cfg := types.VirtualMachineConfigSpec{
		Name: vs.Name, GuestId: vs.GuestID, MemoryMB: int64(vs.MemoryMB), NumCPUs: vs.CPUs,
		Files: &types.VirtualMachineFileInfo{VmPathName: home},
	}
	var devices object.VirtualDeviceList
	scsi, _ := devices.CreateSCSIController("pvscsi")
	devices = append(devices, scsi)
	for _, ds := range vs.Disks {
		disk := devices.CreateDisk(scsi.(types.BaseVirtualController), types.ManagedObjectReference{},
			fmt.Sprintf("[%s] %s", ds.Datastore, ds.Path))
		disk.Key = int32(2000 + len(devices) - 1)
		disk.CapacityInKB = ds.Capacity / 1024
		disk.CapacityInBytes = ds.Capacity
		devices = append(devices, disk)
	}
	devices, err = lab.nicDevices(ctx, devices, vs) // networks.go
	if err != nil {
		return err
	}
	cfg.DeviceChange, _ = devices.ConfigSpec(types.VirtualDeviceConfigSpecOperationAdd)
	for _, dc := range cfg.DeviceChange {
		dc.GetVirtualDeviceConfigSpec().FileOperation = "" // the files exist already
	}
	defer lab.objectPlaceholders(vs)() // vsan.go
	task, err := folder.CreateVM(ctx, cfg, pool, host)
	if err != nil {
		return err
	}
	info, err := task.WaitForResult(ctx, nil)
	if err != nil {
		return err
	}
	ref := info.Result.(types.ManagedObjectReference)
	orig := simulator.Map.Get(ref).(*simulator.VirtualMachine)
	vm := &VM{VirtualMachine: *orig}
	vm.st = &vmState{lab: lab, spec: vs, dsName: vs.Datastore, snaps: map[string]*snapRec{}, nextPid: 1000}
	simulator.Map.Put(vm)

	// Attach real disks to the devices the simulator created (same order).
	i := 0
	for _, dev := range vm.Config.Hardware.Device {
		disk, ok := dev.(*types.VirtualDisk)
		if !ok {
			continue
		}
		dspec := vs.Disks[i]
		i++
		base, err := openBaseLayer(dspec.Datastore, lab.dsDirs[dspec.Datastore], dspec.Path)
		if err != nil {
			return err
		}
		sum := sha1.Sum([]byte(vs.Name + dspec.Path))
		d := &Disk{Key: disk.Key, Capacity: dspec.Capacity, Thin: dspec.Thin, Independent: dspec.Independent,
			UUID:   "6000C29" + fmt.Sprintf("%x-%x-%x-%x-%x", sum[0:4], sum[4:6], sum[6:8], sum[8:10], sum[10:16])[7:],
			layers: []*layer{base}}
		vm.st.disks = append(vm.st.disks, d)
	}
	vm.Config.ChangeTrackingEnabled = types.NewBool(false)
	if vs.HWVersion > 0 {
		vm.Config.Version = fmt.Sprintf("vmx-%02d", vs.HWVersion)
	}
	// ESX: CBT needs virtual hardware 7 or later.
	vm.Capability.ChangeTrackingSupported = types.NewBool(vs.HWVersion == 0 || vs.HWVersion >= 7)
	vm.Guest.GuestId = vs.GuestID
	vm.Guest.GuestFamily = map[string]string{"linux": "linuxGuest", "windows": "windowsGuest"}[vs.Guest]
	vm.Guest.HostName = vs.Name
	vm.Config.GuestFullName = map[string]string{"linux": "Other Linux (64-bit)",
		"windows": "Microsoft Windows Server 2019 (64-bit)"}[vs.Guest]
	vm.Guest.GuestFullName = vm.Config.GuestFullName
	vm.Summary.Config.GuestId = vs.GuestID
	vm.Summary.Config.GuestFullName = vm.Config.GuestFullName
	vm.st.mu.Lock()
	vm.syncConfig()
	vm.st.mu.Unlock()
	if vs.PowerOn && !vs.Template {
		t, err := object.NewVirtualMachine(c, ref).PowerOn(ctx)
		if err != nil {
			return err
		}
		if err := t.Wait(ctx); err != nil {
			return err
		}
		vm.Guest.ToolsRunningStatus = string(types.VirtualMachineToolsRunningStatusGuestToolsRunning)
		vm.Guest.ToolsStatus = types.VirtualMachineToolsStatusToolsOk
		vm.Guest.ToolsVersionStatus2 = string(types.VirtualMachineToolsVersionStatusGuestToolsCurrent)
		vm.Guest.GuestState = "running"
		vm.Guest.IpAddress = fmt.Sprintf("10.0.0.%d", 10+len(lab.vmOrder))
		vm.Summary.Guest.ToolsRunningStatus = vm.Guest.ToolsRunningStatus
		vm.Summary.Guest.ToolsStatus = vm.Guest.ToolsStatus
		vm.Summary.Guest.IpAddress = vm.Guest.IpAddress
		vm.Summary.Guest.HostName = vs.Name
	}
	if vs.Template {
		if err := object.NewVirtualMachine(c, ref).MarkAsTemplate(ctx); err != nil {
			return err
		}
	}
	lab.vmsMu.Lock()
	lab.vms[vs.Name] = vm
	lab.vmOrder = append(lab.vmOrder, vs.Name)
	lab.vmsMu.Unlock()
	if vs.Mover {
		return lab.registerMover(vm)
	}
	return nil
}

func (lab *Lab) closeDisks() {
	for _, vm := range lab.vms {
		for _, d := range vm.st.disks {
			for _, l := range d.layers {
				l.close()
			}
		}
	}
}

func (lab *Lab) hostName(ref *types.ManagedObjectReference) string {
	if ref == nil {
		return ""
	}
	if h, ok := simulator.Map.Get(*ref).(*simulator.HostSystem); ok {
		return h.Name
	}
	return ""
}

func (lab *Lab) readyDoc() *Ready {
	r := &Ready{URL: lab.url, Port: lab.port, User: lab.spec.User, Password: lab.spec.Password,
		Thumbprint: lab.thumbprint, Datacenter: lab.dcName, Pid: os.Getpid(),
		Users: lab.spec.Users, LightVMs: lab.spec.LightVMs}
	for _, h := range lab.hosts {
		rh := ReadyHost{Name: h.Name, Moref: h.Self.Value}
		if p, ok := simulator.Map.Get(*h.Parent).(*simulator.ClusterComputeResource); ok {
			rh.Cluster = p.Name
		}
		lab.describeHost(&rh, h) // strict.go
		r.Hosts = append(r.Hosts, rh)
	}
	names := make([]string, 0, len(lab.dsDirs))
	for n := range lab.dsDirs {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		r.Datastores = append(r.Datastores, ReadyDS{Name: n, Moref: lab.datastores[n].Self.Value, LocalPath: lab.dsDirs[n]})
	}
	for _, vm := range lab.vmList() {
		r.VMs = append(r.VMs, lab.vmDoc(vm))
	}
	r.Movers = lab.moverDocs()
	return r
}

func (lab *Lab) vmDoc(vm *VM) ReadyVM {
	vm.st.mu.Lock()
	defer vm.st.mu.Unlock()
	rv := ReadyVM{Name: vm.Name, Moref: vm.Self.Value, Guest: vm.st.spec.Guest, GuestID: vm.st.spec.GuestID,
		Host: lab.hostName(vm.Runtime.Host), Template: vm.Config.Template}
	if rv.Guest == "" {
		rv.Guest = "other"
	}
	for _, d := range vm.st.disks {
		top := d.top()
		rv.Disks = append(rv.Disks, ReadyDisk{Key: d.Key, Capacity: d.Capacity, DatastorePath: top.dsPath(),
			LocalPath: top.localPath(), Thin: d.Thin, Independent: d.Independent})
	}
	return rv
}

var _ = path.Join
var _ = strings.TrimSpace
