package main

// NAS datastores mounted by HostDatastoreSystem.CreateNasDatastore, as an ESX host does: the
// host's NFS client connects to spec.remoteHost:spec.remotePath. Stock vcsim instead serves the
// local folder spec.localPath; here the lab mounts the export with a user-space NFS client
// (libnfs through FUSE: vmkeep/lab/nfsmount.py) and the datastore's folder is that mount, so
// every /folder read, disk write and storage vMotion of a VM on it goes over NFS to the server.
//
// Lab extension: ESX's NFS client always uses port 2049; a server on another port (tests bind
// ephemeral ports) is named "host:port" in remoteHost. RemoveDatastore (absent in vcsim)
// unmounts it, refusing while VMs live on it (ResourceInUse), as ESX does.

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/ioutil"
	"log"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
)

type nasMount struct {
	dir string
	cmd *exec.Cmd
}

var (
	nasMu     sync.Mutex
	nasMounts = map[string]*nasMount{} // datastore name -> mount
)

// LabDatastoreSystem wraps a host's HostDatastoreSystem (embedded by value, as the registry
// holds it).
type LabDatastoreSystem struct {
	simulator.HostDatastoreSystem
	lab *Lab
}

func (lab *Lab) installNasDatastores() {
	for _, h := range lab.hosts {
		if h.ConfigManager.DatastoreSystem == nil {
			continue
		}
		if orig, ok := simulator.Map.Get(*h.ConfigManager.DatastoreSystem).(*simulator.HostDatastoreSystem); ok {
			simulator.Map.Put(&LabDatastoreSystem{HostDatastoreSystem: *orig, lab: lab})
		}
	}
}

func nfsURL(spec types.HostNasVolumeSpec) (string, error) {
	host, port := spec.RemoteHost, "2049"
	if h, p, err := net.SplitHostPort(spec.RemoteHost); err == nil {
		host, port = h, p
	}
	if host == "" || !strings.HasPrefix(spec.RemotePath, "/") {
		return "", fmt.Errorf("remoteHost and an absolute remotePath are required")
	}
	return fmt.Sprintf("nfs://%s%s?version=4&nfsport=%s", host, spec.RemotePath, port), nil
}

func isMounted(dir string) bool {
	b, err := ioutil.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) > 4 && f[4] == dir {
			return true
		}
	}
	return false
}

// mountNFS starts the user-space NFS client on url at dir and waits until it is mounted.
func (lab *Lab) mountNFS(url, dir string) (*exec.Cmd, error) {
	py := os.Getenv("VMKEEP_LAB_PYTHON")
	if py == "" {
		py = "python3"
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	var stderr bytes.Buffer
	cmd := exec.Command(py, "-m", "vmkeep.lab.nfsmount", url, dir)
	cmd.Stderr = &stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	deadline := time.Now().Add(120 * time.Second)
	for !isMounted(dir) {
		select {
		case err := <-done:
			return nil, fmt.Errorf("NFS mount of %s failed: %v: %s", url, err, strings.TrimSpace(stderr.String()))
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			_ = cmd.Process.Kill()
			return nil, fmt.Errorf("NFS mount of %s: no answer within 120 s", url)
		}
	}
	go func() { <-done }()
	return cmd, nil
}

func unmountNFS(m *nasMount) {
	_ = exec.Command("fusermount3", "-u", "-z", m.dir).Run()
	if m.cmd != nil && m.cmd.Process != nil {
		_ = m.cmd.Process.Signal(syscall.SIGTERM)
	}
	_ = os.Remove(m.dir)
}

func (dss *LabDatastoreSystem) CreateNasDatastore(ctx *simulator.Context, req *types.CreateNasDatastore) soap.HasFault {
	lab := dss.lab
	body := &methods.CreateNasDatastoreBody{}
	spec := req.Spec
	name := spec.LocalPath
	if name == "" || strings.ContainsAny(name, "/\x00") {
		body.Fault_ = simulator.Fault("A specified parameter was not correct: spec.localPath",
			&types.InvalidArgument{InvalidProperty: "spec.localPath"})
		return body
	}
	url, err := nfsURL(spec)
	if err != nil {
		body.Fault_ = simulator.Fault(err.Error(), &types.InvalidArgument{InvalidProperty: "spec.remoteHost"})
		return body
	}
	if _, taken := lab.dsDirs[name]; taken {
		body.Fault_ = simulator.Fault(name, &types.DuplicateName{Name: name})
		return body
	}
	dir := filepath.Join(lab.spec.StateDir, "nas", dss.Host.Self.Value, name)
	cmd, err := lab.mountNFS(url, dir)
	if err != nil {
		log.Printf("CreateNasDatastore %s: %v", name, err)
		body.Fault_ = simulator.Fault(err.Error(), &types.HostConfigFault{})
		return body
	}
	local := spec
	local.LocalPath = dir // vcsim names the datastore after the base and serves this folder
	res := dss.HostDatastoreSystem.CreateNasDatastore(ctx, &types.CreateNasDatastore{This: req.This, Spec: local})
	if res.Fault() != nil {
		unmountNFS(&nasMount{dir: dir, cmd: cmd})
		return res
	}
	ref := res.(*methods.CreateNasDatastoreBody).Res.Returnval
	ds := simulator.Map.Get(ref).(*simulator.Datastore)
	if nas, ok := ds.Info.(*types.NasDatastoreInfo); ok && nas.Nas != nil {
		nas.Nas.Name = name
	}
	ds.Summary.Type = spec.Type
	if ds.Summary.Type == "" {
		ds.Summary.Type = "NFS"
	}
	ds.Host = append(ds.Host, types.DatastoreHostMount{
		Key: dss.Host.Self,
		MountInfo: types.HostMountInfo{
			Path: "/vmfs/volumes/" + name, AccessMode: string(types.HostMountModeReadWrite),
			Mounted: types.NewBool(true), Accessible: types.NewBool(true),
		},
	})
	lab.mu.Lock()
	lab.datastores[name] = ds
	lab.dsDirs[name] = dir
	lab.dsTypes[name] = "NFS"
	lab.mu.Unlock()
	nasMu.Lock()
	nasMounts[name] = &nasMount{dir: dir, cmd: cmd}
	nasMu.Unlock()
	return res
}

func (dss *LabDatastoreSystem) RemoveDatastore(ctx *simulator.Context, req *types.RemoveDatastore) soap.HasFault {
	lab := dss.lab
	body := &methods.RemoveDatastoreBody{}
	ds, ok := simulator.Map.Get(req.Datastore).(*simulator.Datastore)
	if !ok {
		body.Fault_ = simulator.Fault("", &types.ManagedObjectNotFound{Obj: req.Datastore})
		return body
	}
	if len(ds.Vm) > 0 {
		body.Fault_ = simulator.Fault(fmt.Sprintf("The datastore %s is in use by %d VM(s)", ds.Name, len(ds.Vm)),
			&types.ResourceInUse{Type: "Datastore", Name: ds.Name})
		return body
	}
	nasMu.Lock()
	m := nasMounts[ds.Name]
	delete(nasMounts, ds.Name)
	nasMu.Unlock()
	if m != nil {
		unmountNFS(m)
	}
	dss.Datastore = removeRef(dss.Datastore, ds.Self)
	dss.Host.Datastore = dss.Datastore
	if dss.Host.Parent != nil {
		switch p := simulator.Map.Get(*dss.Host.Parent).(type) {
		case *simulator.ClusterComputeResource:
			simulator.Map.RemoveReference(p, &p.Datastore, ds.Self)
		case *mo.ComputeResource:
			simulator.Map.RemoveReference(p, &p.Datastore, ds.Self)
		}
	}
	for _, e := range simulator.Map.All("Datacenter") {
		if dc, ok := e.(*simulator.Datacenter); ok {
			simulator.Map.RemoveReference(dc, &dc.Datastore, ds.Self)
		}
	}
	for _, e := range simulator.Map.All("Folder") {
		if f, ok := e.(*simulator.Folder); ok {
			simulator.Map.RemoveReference(f, &f.ChildEntity, ds.Self)
		}
	}
	simulator.Map.Remove(ds.Self)
	lab.mu.Lock()
	delete(lab.datastores, ds.Name)
	delete(lab.dsDirs, ds.Name)
	delete(lab.dsTypes, ds.Name)
	lab.mu.Unlock()
	body.Res = &types.RemoveDatastoreResponse{}
	return body
}

// moveFile renames from to to; across file systems (a NAS datastore's mount) it copies the
// content (holes kept: all-zero MiB blocks are skipped) and leaves the source for the caller to
// remove once its open handles are closed (an NFSv4 server refuses to remove an open file).
func moveFile(from, to string) (copied bool, err error) {
	err = os.Rename(from, to)
	var le *os.LinkError
	if err == nil || !errors.As(err, &le) || le.Err != syscall.EXDEV {
		return false, err
	}
	src, err := os.Open(from)
	if err != nil {
		return false, err
	}
	defer src.Close()
	fi, err := src.Stat()
	if err != nil {
		return false, err
	}
	if fi.IsDir() {
		return false, fmt.Errorf("%s: cannot move a folder across datastores", from)
	}
	dst, err := os.OpenFile(to, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return false, err
	}
	buf := make([]byte, 1<<20)
	zero := make([]byte, 1<<20)
	var off int64
	for {
		n, rerr := io.ReadFull(src, buf)
		if n > 0 && !bytes.Equal(buf[:n], zero[:n]) {
			if _, werr := dst.WriteAt(buf[:n], off); werr != nil {
				dst.Close()
				return false, werr
			}
		}
		off += int64(n)
		if rerr == io.EOF || rerr == io.ErrUnexpectedEOF {
			break
		}
		if rerr != nil {
			dst.Close()
			return false, rerr
		}
	}
	if err := dst.Truncate(fi.Size()); err != nil {
		dst.Close()
		return false, err
	}
	if err := dst.Sync(); err != nil {
		dst.Close()
		return false, err
	}
	if err := dst.Close(); err != nil {
		return false, err
	}
	return true, nil
}

// moveOrCopy is moveFile for files nobody holds open: the copied source is removed.
func moveOrCopy(from, to string) error {
	copied, err := moveFile(from, to)
	if err == nil && copied {
		err = os.Remove(from)
	}
	return err
}

// reopenFlat points a base layer's open extent at its moved file.
func reopenFlat(l *layer) error {
	if l.isDelta || l.object != "" {
		return fmt.Errorf("%s: only flat base disks can move off a NAS datastore in the lab", l.rel)
	}
	f, err := os.OpenFile(filepath.Join(l.dsDir, l.extentRel()), os.O_RDWR, 0)
	if err != nil {
		return err
	}
	if l.flat != nil {
		l.flat.Close()
	}
	l.flat = f
	return nil
}
