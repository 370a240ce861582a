package main

// Spec is the lab description written by the Python front (vmkeep.lab.spec).
type Spec struct {
	Listen     string          `json:"listen"`
	CertFile   string          `json:"cert_file"`
	KeyFile    string          `json:"key_file"`
	User       string          `json:"user"`
	Password   string          `json:"password"`
	StateDir   string          `json:"state_dir"`
	Datastores []DatastoreSpec `json:"datastores"`
	VMs        []VMSpec        `json:"vms"`
	Users      []UserSpec      `json:"users,omitempty"`     // privileges.go
	Tags       []TagSpec       `json:"tags,omitempty"`      // tagging.go
	LightVMs   int             `json:"light_vms,omitempty"` // lightvms.go
	// strict.go: lenient turns off the strict vCenter behaviour; host_concurrency is N.
	Lenient         bool `json:"lenient,omitempty"`
	HostConcurrency int  `json:"host_concurrency,omitempty"`
	// otherdc.go: DC2's datastores (names DC1 may also use) and whether DC2 is listed first
	DC2Datastores []DC2DatastoreSpec `json:"dc2_datastores,omitempty"`
	DC2First      bool               `json:"dc2_first,omitempty"`
}

// DatastoreSpec names a datastore and the host directory holding its files.
type DatastoreSpec struct {
	Name string `json:"name"`
	Dir  string `json:"dir"`
	Type string `json:"type,omitempty"` // VMFS (default) | NFS: decides what CBT's "*" answers
	// VMFSVersion of a VMFS datastore: 5 (default; COWD snapshot deltas) or 6 (SEsparse)
	VMFSVersion int `json:"vmfs_version,omitempty"`

	// vsan | VVOL: disks are objects stored here (vsan.go); "" for file datastores
	ObjectDir string `json:"object_dir,omitempty"`

	// hosts that mount it (empty: every host); hotadd.go
	Hosts []string `json:"hosts,omitempty"`
}

// VMSpec describes one VM; its disk files are already laid out by the Python front.
type VMSpec struct {
	Name      string     `json:"name"`
	GuestID   string     `json:"guest_id"`
	Guest     string     `json:"guest"` // linux | windows | other
	Host      string     `json:"host"`
	Datastore string     `json:"datastore"`
	Template  bool       `json:"template"`
	HWVersion int        `json:"hw_version,omitempty"` // virtual hardware version; < 7: no CBT
	PowerOn   bool       `json:"power_on"`
	MemoryMB  int32      `json:"memory_mb"`
	CPUs      int32      `json:"cpus"`
	Disks     []DiskSpec `json:"disks"`
	Fs        []FSSpec   `json:"filesystems"`
	Nics      []NicSpec  `json:"nics"` // networks.go

	// a data-mover VM for hot-add (hotadd.go)
	Mover bool `json:"mover,omitempty"`
}

// FSSpec locates a guest file system on a disk: byte offset and size of its partition.
type FSSpec struct {
	Disk   int    `json:"disk"`
	Offset int64  `json:"offset"`
	Size   int64  `json:"size"`
	Type   string `json:"type"`  // ext4 | ntfs | vfat
	Mount  string `json:"mount"` // "/" or "C:\\" ...
}

// DiskSpec is one virtual disk: descriptor path relative to its datastore ("vm/vm.vmdk").
type DiskSpec struct {
	Datastore   string `json:"datastore"`
	Path        string `json:"path"`
	Capacity    int64  `json:"capacity"`
	Thin        bool   `json:"thin"`
	Independent bool   `json:"independent"`
}

// Ready is written once the server listens.
type Ready struct {
	URL        string      `json:"url"`
	Port       int         `json:"port"`
	User       string      `json:"user"`
	Password   string      `json:"password"`
	Thumbprint string      `json:"thumbprint"`
	Datacenter string      `json:"datacenter"`
	Hosts      []ReadyHost `json:"hosts"`
	Datastores []ReadyDS   `json:"datastores"`
	VMs        []ReadyVM   `json:"vms"`
	Pid        int         `json:"pid"`
	Users      []UserSpec  `json:"users,omitempty"`
	LightVMs   int         `json:"light_vms,omitempty"`

	Movers []ReadyMover `json:"movers,omitempty"` // hotadd.go
}

type ReadyHost struct {
	Name    string `json:"name"`
	Moref   string `json:"moref"`
	Cluster string `json:"cluster,omitempty"`
	Address string `json:"address,omitempty"` // the host's own HTTPS endpoint (strict.go)
	Port    int    `json:"port,omitempty"`
	CertPEM string `json:"cert_pem,omitempty"`
}

type ReadyDS struct {
	Name      string `json:"name"`
	Moref     string `json:"moref"`
	LocalPath string `json:"local_path"`
}

type ReadyVM struct {
	Name     string      `json:"name"`
	Moref    string      `json:"moref"`
	Guest    string      `json:"guest"`
	GuestID  string      `json:"guest_id"`
	Host     string      `json:"host"`
	Template bool        `json:"template"`
	Disks    []ReadyDisk `json:"disks"`
}

type ReadyDisk struct {
	Key           int32  `json:"key"`
	Capacity      int64  `json:"capacity"`
	DatastorePath string `json:"datastore_path"`
	LocalPath     string `json:"local_path"`
	Thin          bool   `json:"thin"`
	Independent   bool   `json:"independent"`
}
