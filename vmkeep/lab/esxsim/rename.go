package main

// Rename_Task of a lab VM: the stock call renames the inventory object; the lab's own tables,
// keyed by name, follow it (a restore that replaces a VM renames the old one aside, creates a
// new VM under the old name, and renames the old one back if the restore fails).
//
// VM names are stored escaped, as vSphere stores entity names: "/" as %2f, "\" as %5c and "%"
// as %25 unless it starts one of these sequences (escapeName; vcsim stored them as given).

import (
	"regexp"
	"strings"

	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
)

var escapeSeq = regexp.MustCompile(`^%(2[fF]|5[cC]|25)`)

// escapeName is vSphere's escaping of an entity name.
func escapeName(name string) string {
	var b strings.Builder
	for i := 0; i < len(name); i++ {
		switch c := name[i]; {
		case c == '/':
			b.WriteString("%2f")
		case c == '\\':
			b.WriteString("%5c")
		case c == '%' && !escapeSeq.MatchString(name[i:]):
			b.WriteString("%25")
		default:
			b.WriteByte(c)
		}
	}
	return b.String()
}

func (vm *VM) RenameTask(req *types.Rename_Task) soap.HasFault {
	lab := vm.lab()
	old := vm.Name
	req.NewName = escapeName(req.NewName)
	if f := vm.renameOntoTaken(req.NewName); f != nil { // dupname.go
		ref := startTask(vm, vm.Name, "rename", false, failWith(f))
		return &methods.Rename_TaskBody{Res: &types.Rename_TaskResponse{Returnval: ref}}
	}
	res := vm.VirtualMachine.RenameTask(req)
	if vm.Name == old {
		return res
	}
	lab.vmsMu.Lock()
	defer lab.vmsMu.Unlock()
	if lab.vms[old] == vm {
		delete(lab.vms, old)
		lab.rebind(old, vm)
	}
	if lab.vms[vm.Name] == nil {
		lab.vms[vm.Name] = vm
	}
	lab.reorder(old, vm.Name)
	return res
}

// reorder keeps vmOrder to the names lab.vms holds, with renamed in the place of old (vmsMu held).
func (lab *Lab) reorder(old, renamed string) {
	var order []string
	seen := map[string]bool{}
	for _, n := range lab.vmOrder {
		if n == old && lab.vms[old] == nil {
			n = renamed
		}
		if lab.vms[n] != nil && !seen[n] {
			order, seen[n] = append(order, n), true
		}
	}
	if lab.vms[renamed] != nil && !seen[renamed] {
		order = append(order, renamed)
	}
	lab.vmOrder = order
}
