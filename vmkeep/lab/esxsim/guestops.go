package main

// Guest operations without Docker: a process table per VM (StartProgramInGuest records the
// call, e.g. pre-freeze/post-thaw scripts, and exits with 0 or an injected exit code) and file
// transfers mapped onto the guest's file systems.

import (
	"fmt"
	"io/ioutil"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
)

type guestProc struct {
	Pid       int64     `json:"pid"`
	Path      string    `json:"path"`
	Args      string    `json:"args"`
	WorkDir   string    `json:"work_dir"`
	Env       []string  `json:"env"`
	Owner     string    `json:"owner"`
	Start     time.Time `json:"start"`
	End       time.Time `json:"end"`
	ExitCode  int32     `json:"exit_code"`
	Succeeded bool      `json:"-"`
}

type GuestProcessManager struct {
	mo.GuestProcessManager
	lab *Lab
}

type GuestFileManager struct {
	mo.GuestFileManager
	lab *Lab
}

type transfer struct {
	vm        *VM
	path      string
	upload    bool
	overwrite bool
	data      []byte
}

var (
	transfersMu sync.Mutex
	transfers   = map[string]*transfer{}
	transferSeq int
)

func (lab *Lab) vmByRef(ref types.ManagedObjectReference) *VM {
	vm, _ := simulator.Map.Get(ref).(*VM)
	return vm
}

func guestCheck(vm *VM, auth types.BaseGuestAuthentication) *soap.Fault {
	if vm == nil {
		return soapFault("The object has already been deleted or has not been completely created", &types.ManagedObjectNotFound{})
	}
	if vm.Runtime.PowerState != types.VirtualMachinePowerStatePoweredOn {
		return soapFault("The attempted operation cannot be performed in the current state (Powered off).",
			&types.InvalidPowerState{RequestedState: types.VirtualMachinePowerStatePoweredOn, ExistingState: vm.Runtime.PowerState})
	}
	if vm.Guest.ToolsRunningStatus != string(types.VirtualMachineToolsRunningStatusGuestToolsRunning) {
		return soapFault("The guest operations agent could not be contacted.", &types.GuestOperationsUnavailable{})
	}
	if a, ok := auth.(*types.NamePasswordAuthentication); ok {
		if a.Username == "" || vm.lab().faults.peek("guest_auth", vm.Name) != nil {
			return soapFault("Failed to authenticate with the guest operating system using the supplied credentials.",
				&types.InvalidGuestLogin{})
		}
	}
	return nil
}

func (m *GuestProcessManager) StartProgramInGuest(req *types.StartProgramInGuest) soap.HasFault {
	body := &methods.StartProgramInGuestBody{}
	vm := m.lab.vmByRef(req.Vm)
	if f := guestCheck(vm, req.Auth); f != nil {
		body.Fault_ = f
		return body
	}
	spec := req.Spec.GetGuestProgramSpec()
	owner := ""
	if a, ok := req.Auth.(*types.NamePasswordAuthentication); ok {
		owner = a.Username
	}
	vm.st.mu.Lock()
	vm.st.nextPid++
	p := &guestProc{Pid: vm.st.nextPid, Path: spec.ProgramPath, Args: spec.Arguments, WorkDir: spec.WorkingDirectory,
		Env: spec.EnvVariables, Owner: owner, Start: time.Now()}
	if r := m.lab.faults.take("guest_program", spec.ProgramPath); r != nil {
		p.ExitCode = int32(r.ExitCode)
		if p.ExitCode == 0 {
			p.ExitCode = 1
		}
	}
	p.End = p.Start.Add(10 * time.Millisecond)
	vm.st.procs = append(vm.st.procs, p)
	vm.st.mu.Unlock()
	body.Res = &types.StartProgramInGuestResponse{Returnval: p.Pid}
	return body
}

// guestProcessInfo mirrors types.GuestProcessInfo but always sends exitCode once a process
// ended (govmomi's type omits a zero exit code, which clients read as "still running").
type guestProcessInfo struct {
	Name      string     `xml:"name"`
	Pid       int64      `xml:"pid"`
	Owner     string     `xml:"owner"`
	CmdLine   string     `xml:"cmdLine"`
	StartTime time.Time  `xml:"startTime"`
	EndTime   *time.Time `xml:"endTime,omitempty"`
	ExitCode  *int32     `xml:"exitCode,omitempty"`
}

type ListProcessesInGuestResponse struct {
	Returnval []guestProcessInfo `xml:"returnval,omitempty"`
}

type listProcessesBody struct {
	Res    *ListProcessesInGuestResponse
	Fault_ *soap.Fault
}

func (b *listProcessesBody) Fault() *soap.Fault { return b.Fault_ }

func (m *GuestProcessManager) ListProcessesInGuest(req *types.ListProcessesInGuest) soap.HasFault {
	body := &listProcessesBody{}
	vm := m.lab.vmByRef(req.Vm)
	if f := guestCheck(vm, req.Auth); f != nil {
		body.Fault_ = f
		return body
	}
	want := map[int64]bool{}
	for _, p := range req.Pids {
		want[p] = true
	}
	res := &ListProcessesInGuestResponse{}
	vm.st.mu.Lock()
	for _, p := range vm.st.procs {
		if len(want) > 0 && !want[p.Pid] {
			continue
		}
		info := guestProcessInfo{Name: p.Path, Pid: p.Pid, Owner: p.Owner,
			CmdLine: fmt.Sprintf("\"%s\" %s", p.Path, p.Args), StartTime: p.Start}
		if time.Now().After(p.End) {
			end := p.End
			code := p.ExitCode
			info.EndTime = &end
			info.ExitCode = &code
		}
		res.Returnval = append(res.Returnval, info)
	}
	vm.st.mu.Unlock()
	body.Res = res
	return body
}

func (m *GuestProcessManager) TerminateProcessInGuest(req *types.TerminateProcessInGuest) soap.HasFault {
	body := &methods.TerminateProcessInGuestBody{}
	vm := m.lab.vmByRef(req.Vm)
	if f := guestCheck(vm, req.Auth); f != nil {
		body.Fault_ = f
		return body
	}
	body.Res = &types.TerminateProcessInGuestResponse{}
	return body
}

func (m *GuestProcessManager) ReadEnvironmentVariableInGuest(req *types.ReadEnvironmentVariableInGuest) soap.HasFault {
	body := &methods.ReadEnvironmentVariableInGuestBody{}
	vm := m.lab.vmByRef(req.Vm)
	if f := guestCheck(vm, req.Auth); f != nil {
		body.Fault_ = f
		return body
	}
	body.Res = &types.ReadEnvironmentVariableInGuestResponse{Returnval: []string{"PATH=/usr/bin:/bin"}}
	return body
}

func (lab *Lab) transferURL(id string) string {
	return fmt.Sprintf("https://%s/guestFile?id=%s", lab.hostPort(), id)
}

func (lab *Lab) hostPort() string { return fmt.Sprintf("127.0.0.1:%d", lab.port) }

func newTransfer(t *transfer) string {
	transfersMu.Lock()
	defer transfersMu.Unlock()
	transferSeq++
	id := fmt.Sprintf("%d-%d", transferSeq, time.Now().UnixNano())
	transfers[id] = t
	return id
}

func (m *GuestFileManager) InitiateFileTransferToGuest(req *types.InitiateFileTransferToGuest) soap.HasFault {
	body := &methods.InitiateFileTransferToGuestBody{}
	vm := m.lab.vmByRef(req.Vm)
	if f := guestCheck(vm, req.Auth); f != nil {
		body.Fault_ = f
		return body
	}
	if _, _, err := vm.fsFor(req.GuestFilePath); err != nil {
		body.Fault_ = soapFault(err.Error(), &types.FileNotFound{FileFault: types.FileFault{File: req.GuestFilePath}})
		return body
	}
	id := newTransfer(&transfer{vm: vm, path: req.GuestFilePath, upload: true, overwrite: req.Overwrite})
	body.Res = &types.InitiateFileTransferToGuestResponse{Returnval: m.lab.transferURLFor(vm, id)}
	return body
}

func (m *GuestFileManager) InitiateFileTransferFromGuest(req *types.InitiateFileTransferFromGuest) soap.HasFault {
	body := &methods.InitiateFileTransferFromGuestBody{}
	vm := m.lab.vmByRef(req.Vm)
	if f := guestCheck(vm, req.Auth); f != nil {
		body.Fault_ = f
		return body
	}
	data, err := vm.readGuestFile(req.GuestFilePath)
	if err != nil {
		body.Fault_ = soapFault("File "+req.GuestFilePath+" was not found", &types.FileNotFound{FileFault: types.FileFault{File: req.GuestFilePath}})
		return body
	}
	id := newTransfer(&transfer{vm: vm, path: req.GuestFilePath, data: data})
	body.Res = &types.InitiateFileTransferFromGuestResponse{Returnval: types.FileTransferInformation{
		Attributes: &types.GuestFileAttributes{}, Size: int64(len(data)), Url: m.lab.transferURLFor(vm, id)}}
	return body
}

func (m *GuestFileManager) MakeDirectoryInGuest(req *types.MakeDirectoryInGuest) soap.HasFault {
	body := &methods.MakeDirectoryInGuestBody{}
	vm := m.lab.vmByRef(req.Vm)
	if f := guestCheck(vm, req.Auth); f != nil {
		body.Fault_ = f
		return body
	}
	if err := vm.makeGuestDir(req.DirectoryPath); err != nil {
		body.Fault_ = soapFault(err.Error(), &types.FileNotFound{FileFault: types.FileFault{File: req.DirectoryPath}})
		return body
	}
	body.Res = &types.MakeDirectoryInGuestResponse{}
	return body
}

func (m *GuestFileManager) CreateTemporaryFileInGuest(req *types.CreateTemporaryFileInGuest) soap.HasFault {
	body := &methods.CreateTemporaryFileInGuestBody{}
	vm := m.lab.vmByRef(req.Vm)
	if f := guestCheck(vm, req.Auth); f != nil {
		body.Fault_ = f
		return body
	}
	dir := req.DirectoryPath
	sep := "/"
	if dir == "" {
		dir = "/tmp"
		if vm.st.spec.Guest == "windows" {
			dir = "C:"
		}
	}
	if vm.st.spec.Guest == "windows" {
		sep = "\\"
	}
	name := fmt.Sprintf("%s%s%s%d%s", strings.TrimRight(dir, "/\\"), sep, req.Prefix, time.Now().UnixNano()%1000000, req.Suffix)
	if err := vm.writeGuestFile(name, nil, false); err != nil {
		body.Fault_ = soapFault(err.Error(), &types.CannotCreateFile{FileFault: types.FileFault{File: name}})
		return body
	}
	body.Res = &types.CreateTemporaryFileInGuestResponse{Returnval: name}
	return body
}

func (m *GuestFileManager) DeleteFileInGuest(req *types.DeleteFileInGuest) soap.HasFault {
	body := &methods.DeleteFileInGuestBody{}
	vm := m.lab.vmByRef(req.Vm)
	if f := guestCheck(vm, req.Auth); f != nil {
		body.Fault_ = f
		return body
	}
	if err := vm.deleteGuestFile(req.FilePath); err != nil {
		body.Fault_ = soapFault("File "+req.FilePath+" was not found", &types.FileNotFound{FileFault: types.FileFault{File: req.FilePath}})
		return body
	}
	body.Res = &types.DeleteFileInGuestResponse{}
	return body
}

func (lab *Lab) serveGuestFile(w http.ResponseWriter, r *http.Request) {
	id := r.URL.Query().Get("id")
	transfersMu.Lock()
	t := transfers[id]
	delete(transfers, id)
	transfersMu.Unlock()
	if t == nil {
		http.Error(w, "unknown transfer", http.StatusNotFound)
		return
	}
	if t.upload {
		if r.Method != http.MethodPut && r.Method != http.MethodPost {
			http.Error(w, "PUT expected", http.StatusMethodNotAllowed)
			return
		}
		data, err := ioutil.ReadAll(r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		if err := t.vm.writeGuestFile(t.path, data, t.overwrite); err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.WriteHeader(http.StatusOK)
		return
	}
	w.Header().Set("Content-Length", fmt.Sprint(len(t.data)))
	w.Write(t.data)
}
