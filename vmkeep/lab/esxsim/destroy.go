package main

// What Destroy_Task deletes, as vSphere does: the VM's own files — its .vmx, NVRAM, snapshot
// list, its disks' descriptors and extents (on any datastore), CBT files — and its home folder
// only once nothing else is left in it (vmware.log files go with the last .vmx). Stock vcsim
// removes the whole home folder instead, which deletes another VM's files kept there (e.g. a
// restored VM's disk placed in the folder of the VM it replaces) — more than vSphere would.

import (
	"os"
	"path/filepath"
	"strings"
)

// ownFiles lists the host files of the VM's configuration and disks (vm.st.mu held).
func (vm *VM) ownFiles() []string {
	lab := vm.lab()
	vmx := lab.localPath(vm.Config.Files.VmPathName)
	stem := strings.TrimSuffix(vmx, ".vmx")
	files := []string{vmx, stem + ".nvram", stem + ".vmsd", stem + ".vmxf"}
	for _, d := range vm.st.disks {
		for _, l := range d.layers {
			files = append(files, l.localPath())
			if l.object == "" {
				files = append(files, filepath.Join(l.dsDir, l.extentRel()))
			}
		}
		if len(d.layers) > 0 {
			files = append(files, lab.localPath(vm.ctkPath(d)))
		}
	}
	return files
}

// removeOwnFiles deletes files, then the logs and the home folder of vmx if no VM is left there.
func removeOwnFiles(files []string, vmx string) {
	for _, f := range files {
		_ = os.Remove(f)
	}
	home := filepath.Dir(vmx)
	if others, _ := filepath.Glob(filepath.Join(home, "*.vmx")); len(others) > 0 {
		return
	}
	logs, _ := filepath.Glob(filepath.Join(home, "vmware*.log"))
	for _, f := range logs {
		_ = os.Remove(f)
	}
	_ = os.Remove(home) // only if empty
}
