package main

// VM names are unique within their folder, as vSphere keeps them ("A folder cannot contain
// virtual machines with identical names": vSphere's VM administration guide; the
// DuplicateName fault of CreateVM_Task, RegisterVM_Task, ImportVApp, MoveIntoFolder_Task and
// Rename_Task).  Stock vcsim created a second VM of the same name in the same folder (its files
// in "NAME (0)/"), moved a VM into a folder holding its name, and answered a rename onto a taken
// name with InvalidArgument.  Names in different folders may be the same, as in vSphere.
//
// The lab's own tables (lab.vms, the admin API's ?vm=NAME) hold one VM per name: the one
// created last; when it goes (destroyed, renamed), rebind gives the name to another VM of it.
//
// CreateVM_Task, RegisterVM_Task and MoveIntoFolder_Task return a task that fails with
// DuplicateName (a move then moves nothing); ImportVApp (not a task) answers the fault itself;
// Rename_Task's task fails with it.  Names are compared as vSphere stores them (escaped,
// rename.go).

import (
	"fmt"
	"html"
	"net/http"
	"regexp"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"
)

var (
	thisFolderRe   = regexp.MustCompile(`<_this[^>]*type="Folder"[^>]*>([^<]+)</_this>`)
	importFolderRe = regexp.MustCompile(`<folder[^>]*type="Folder"[^>]*>([^<]+)</folder>`)
	moveListRe     = regexp.MustCompile(`<list[^>]*type="(VirtualMachine|VirtualApp)"[^>]*>([^<]+)</list>`)
	registerNameRe = regexp.MustCompile(`(?s)<RegisterVM_Task\b.*?</_this>.*?<name\b[^>]*>([^<]*)</name>`)
)

// holderOfName is the child of folder (a VM or vApp) called name (escaped), or nil.
func holderOfName(folder types.ManagedObjectReference, name string) mo.Entity {
	f, ok := simulator.Map.Get(folder).(*simulator.Folder)
	if !ok {
		return nil
	}
	for _, ref := range f.ChildEntity {
		if ref.Type != "VirtualMachine" && ref.Type != "VirtualApp" {
			continue
		}
		if e, ok := simulator.Map.Get(ref).(mo.Entity); ok && e.Entity().Name == name {
			return e
		}
	}
	return nil
}

func duplicateName(name string, holder mo.Entity) *labFault {
	return fault(&types.DuplicateName{Name: name, Object: holder.Reference()},
		"The name '%s' already exists.", name)
}

// refuseDuplicateName answers a CreateVM_Task, RegisterVM_Task or ImportVApp (body already
// escaped by escapeNewVMName) whose new VM's name its folder holds already, or a
// MoveIntoFolder_Task onto a name (refuseMoveOntoName); true if it did.
func refuseDuplicateName(w http.ResponseWriter, method string, body []byte) bool {
	var folderM, nameM [][]byte
	switch method {
	case "CreateVM_Task":
		folderM, nameM = thisFolderRe.FindSubmatch(body), newVMNameRe.FindSubmatch(body)
		if nameM != nil {
			nameM = nameM[1:]
		}
	case "RegisterVM_Task": // no name: the .vmx's displayName (not checked here)
		folderM, nameM = thisFolderRe.FindSubmatch(body), registerNameRe.FindSubmatch(body)
	case "ImportVApp":
		folderM, nameM = importFolderRe.FindSubmatch(body), newVMNameRe.FindSubmatch(body)
		if nameM != nil {
			nameM = nameM[1:]
		}
	case "MoveIntoFolder_Task":
		return refuseMoveOntoName(w, body)
	default:
		return false
	}
	if folderM == nil || nameM == nil || len(nameM) < 2 {
		return false
	}
	folder := types.ManagedObjectReference{Type: "Folder", Value: html.UnescapeString(string(folderM[1]))}
	name := html.UnescapeString(string(nameM[1]))
	holder := holderOfName(folder, name)
	if holder == nil {
		return false
	}
	f := duplicateName(name, holder)
	if method == "ImportVApp" {
		writeSoapFault(w, f.msg, "DuplicateName", fmt.Sprintf(`<name>%s</name><object type="%s">%s</object>`,
			xmlEscape(name), holder.Reference().Type, holder.Reference().Value))
		return true
	}
	failedTask(w, method, folder, name, f)
	return true
}

// refuseMoveOntoName answers a MoveIntoFolder_Task moving a VM or vApp into a folder that holds
// its name already (another entity of it); true if it did.
func refuseMoveOntoName(w http.ResponseWriter, body []byte) bool {
	folderM := thisFolderRe.FindSubmatch(body)
	if folderM == nil {
		return false
	}
	folder := types.ManagedObjectReference{Type: "Folder", Value: html.UnescapeString(string(folderM[1]))}
	for _, m := range moveListRe.FindAllSubmatch(body, -1) {
		ref := types.ManagedObjectReference{Type: string(m[1]), Value: html.UnescapeString(string(m[2]))}
		moved, ok := simulator.Map.Get(ref).(mo.Entity)
		if !ok {
			continue
		}
		name := moved.Entity().Name
		if holder := holderOfName(folder, name); holder != nil && holder.Reference() != ref {
			failedTask(w, "MoveIntoFolder_Task", folder, name, duplicateName(name, holder))
			return true
		}
	}
	return false
}

// taskNames: the simulator's task name of each method answered by failedTask.
var taskNames = map[string]string{"CreateVM_Task": "createVm", "RegisterVM_Task": "registerVm",
	"MoveIntoFolder_Task": "moveIntoFolder"}

// failedTask answers method (a task method of folder) with a task that fails with f.
func failedTask(w http.ResponseWriter, method string, folder types.ManagedObjectReference, entity string, f *labFault) {
	task := startTask(simulator.Map.Get(folder), entity, taskNames[method], false, failWith(f))
	w.Header().Set("Content-Type", "text/xml; charset=utf-8")
	fmt.Fprintf(w, `<?xml version="1.0" encoding="UTF-8"?>
<soapenv:Envelope xmlns:soapenc="http://schemas.xmlsoap.org/soap/encoding/" xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns:xsd="http://www.w3.org/2001/XMLSchema" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><soapenv:Body><%sResponse xmlns="urn:vim25"><returnval type="Task">%s</returnval></%sResponse></soapenv:Body></soapenv:Envelope>`,
		method, task.Value, method)
}

// renameOntoTaken: the fault of renaming vm to newName (escaped) when another entity of its
// folder holds that name, or nil.
func (vm *VM) renameOntoTaken(newName string) *labFault {
	if vm.Parent == nil || newName == vm.Name {
		return nil
	}
	if holder := holderOfName(*vm.Parent, newName); holder != nil && holder.Reference() != vm.Self {
		return duplicateName(newName, holder)
	}
	return nil
}

// rebind points lab.vms[name] at another lab VM of that name than gone, if there is one
// (vmsMu held).
func (lab *Lab) rebind(name string, gone *VM) {
	for _, e := range simulator.Map.All("VirtualMachine") {
		if vm, ok := e.(*VM); ok && vm != gone && vm.Name == name && vm.lab() == lab {
			lab.vms[name] = vm
			return
		}
	}
}
