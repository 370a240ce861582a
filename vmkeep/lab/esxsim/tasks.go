package main

// Task helpers: run a task body synchronously or in the background, with ESX-like messages.

import (
	"fmt"
	"log"
	"runtime/debug"
	"time"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"
)

// labFault carries a fault and its localized message.
type labFault struct {
	fault types.BaseMethodFault
	msg   string
}

// methodNames maps task names to the vmodl method names ESX reports in TaskInfo.name.
var methodNames = map[string][2]string{
	"createSnapshot":          {"CreateSnapshot_Task", "VirtualMachine.createSnapshot"},
	"removeSnapshot":          {"RemoveSnapshot_Task", "vm.Snapshot.remove"},
	"removeAllSnapshots":      {"RemoveAllSnapshots_Task", "VirtualMachine.removeAllSnapshots"},
	"revertToSnapshot":        {"RevertToSnapshot_Task", "vm.Snapshot.revert"},
	"revertToCurrentSnapshot": {"RevertToCurrentSnapshot_Task", "VirtualMachine.revertToCurrentSnapshot"},
	"reconfigVm":              {"ReconfigVM_Task", "VirtualMachine.reconfigure"},
	"relocateVm":              {"RelocateVM_Task", "VirtualMachine.relocate"},
	"moveVirtualDisk":         {"MoveVirtualDisk_Task", "VirtualDiskManager.moveVirtualDisk"},
	"copyVirtualDisk":         {"CopyVirtualDisk_Task", "VirtualDiskManager.copyVirtualDisk"},
	"createVm":                {"CreateVM_Task", "Folder.createVm"},
	"registerVm":              {"RegisterVM_Task", "Folder.registerVm"},
	"moveIntoFolder":          {"MoveIntoFolder_Task", "Folder.moveIntoFolder"},
	"rename":                  {"Rename_Task", "VirtualMachine.rename"},
}

type taskBody func() (types.AnyType, *labFault)

// failWith is a task body that fails with f (a call refused before it starts any work).
func failWith(f *labFault) taskBody {
	return func() (types.AnyType, *labFault) { return nil, f }
}

func startTask(obj mo.Reference, entityName, name string, async bool, body taskBody) types.ManagedObjectReference {
	task := simulator.CreateTask(obj, name, nil)
	task.Info.EntityName = entityName
	if m, ok := methodNames[name]; ok {
		task.Info.Name = m[0]
		task.Info.DescriptionId = m[1]
	}
	simulator.Map.Update(task, []types.PropertyChange{
		{Name: "info.startTime", Val: time.Now()},
		{Name: "info.state", Val: types.TaskInfoStateRunning},
	})
	run := func() {
		res, f := func() (res types.AnyType, f *labFault) {
			defer func() {
				if r := recover(); r != nil {
					log.Printf("task %s panicked: %v\n%s", name, r, debug.Stack())
					f = fault(&types.SystemError{Reason: fmt.Sprint(r)}, "A general system error occurred: %v", r)
				}
			}()
			return body()
		}()
		state := types.TaskInfoStateSuccess
		var fault interface{}
		if f != nil {
			state = types.TaskInfoStateError
			msg := f.msg
			if msg == "" {
				msg = fmt.Sprintf("%T", f.fault)
			}
			fault = types.LocalizedMethodFault{Fault: f.fault, LocalizedMessage: msg}
		}
		simulator.Map.Update(task, []types.PropertyChange{
			{Name: "info.completeTime", Val: time.Now()},
			{Name: "info.state", Val: state},
			{Name: "info.result", Val: res},
			{Name: "info.error", Val: fault},
		})
	}
	if async {
		go run()
	} else {
		run()
	}
	return task.Self
}

func fault(f types.BaseMethodFault, format string, args ...interface{}) *labFault {
	return &labFault{fault: f, msg: fmt.Sprintf(format, args...)}
}
