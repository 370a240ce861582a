package main

// Guest file systems: files are written into / read from the ext4, NTFS or FAT partitions of a
// guest's current disk state with Debian tools (debugfs, ntfscp/ntfscat, mcopy), by exporting
// the partition to a scratch file and importing the changed blocks back as guest writes.

import (
	"bytes"
	"fmt"
	"io/ioutil"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strings"
)

func (vm *VM) fsFor(guestPath string) (*FSSpec, string, error) {
	var best *FSSpec
	rest := ""
	norm := guestPath
	if vm.st.spec.Guest == "windows" {
		norm = strings.ReplaceAll(guestPath, "\\", "/")
	}
	for i := range vm.st.spec.Fs {
		fs := &vm.st.spec.Fs[i]
		m := strings.ReplaceAll(fs.Mount, "\\", "/")
		if vm.st.spec.Guest == "windows" {
			if len(norm) >= 2 && strings.EqualFold(norm[:2], m[:2]) {
				best, rest = fs, norm[2:]
			}
			continue
		}
		if strings.HasPrefix(norm, m) && (best == nil || len(m) > len(best.Mount)) {
			best, rest = fs, "/"+strings.TrimPrefix(strings.TrimPrefix(norm, m), "/")
		}
	}
	if best == nil {
		return nil, "", fmt.Errorf("no guest file system holds %s", guestPath)
	}
	if !strings.HasPrefix(rest, "/") {
		rest = "/" + rest
	}
	return best, path.Clean(rest), nil
}

func (vm *VM) exportFS(d *Disk, fs *FSSpec) (string, error) {
	f, err := ioutil.TempFile(vm.lab().spec.StateDir, "guestfs-*.img")
	if err != nil {
		return "", err
	}
	defer f.Close()
	buf := make([]byte, 1<<20)
	top := len(d.layers) - 1
	for off := int64(0); off < fs.Size; off += int64(len(buf)) {
		n := int64(len(buf))
		if off+n > fs.Size {
			n = fs.Size - off
		}
		if err := d.readAt(buf[:n], fs.Offset+off, top); err != nil {
			return "", err
		}
		if _, err := f.WriteAt(buf[:n], off); err != nil {
			return "", err
		}
	}
	return f.Name(), nil
}

func (vm *VM) importFS(d *Disk, fs *FSSpec, img string) error {
	f, err := os.Open(img)
	if err != nil {
		return err
	}
	defer f.Close()
	const bs = 4096
	a := make([]byte, bs)
	b := make([]byte, bs)
	top := len(d.layers) - 1
	for off := int64(0); off < fs.Size; off += bs {
		if _, err := f.ReadAt(a, off); err != nil {
			break
		}
		if err := d.readAt(b, fs.Offset+off, top); err != nil {
			return err
		}
		if !bytes.Equal(a, b) {
			if err := d.writeAt(a, fs.Offset+off, true); err != nil {
				return err
			}
		}
	}
	return nil
}

func run(name string, args ...string) error {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %v: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	if name == "debugfs" && bytes.Contains(out, []byte(": ")) && bytes.Contains(bytes.ToLower(out), []byte("error")) {
		return fmt.Errorf("debugfs: %s", strings.TrimSpace(string(out)))
	}
	return nil
}

// writeGuestFile puts data at guestPath inside the guest's file system.
func (vm *VM) writeGuestFile(guestPath string, data []byte, overwrite bool) error {
	vm.st.mu.Lock()
	defer vm.st.mu.Unlock()
	fs, p, err := vm.fsFor(guestPath)
	if err != nil {
		return err
	}
	d := vm.st.disks[fs.Disk]
	d.mu.Lock()
	defer d.mu.Unlock()
	img, err := vm.exportFS(d, fs)
	if err != nil {
		return err
	}
	defer os.Remove(img)
	src, err := ioutil.TempFile(vm.lab().spec.StateDir, "guestfile-*")
	if err != nil {
		return err
	}
	src.Write(data)
	src.Close()
	defer os.Remove(src.Name())
	switch fs.Type {
	case "ext4", "ext3", "ext2":
		exists := exec.Command("debugfs", "-R", "stat "+p, img).Run() == nil &&
			!strings.Contains(outOf("debugfs", "-R", "stat "+p, img), "not found")
		if exists && !overwrite {
			return os.ErrExist
		}
		cmds := []string{}
		dir := path.Dir(p)
		parts := strings.Split(strings.Trim(dir, "/"), "/")
		cur := ""
		for _, part := range parts {
			if part == "" {
				continue
			}
			cur += "/" + part
			cmds = append(cmds, "mkdir "+cur)
		}
		if exists {
			cmds = append(cmds, "rm "+p)
		}
		cmds = append(cmds, fmt.Sprintf("write %s %s", src.Name(), p))
		script := filepath.Join(filepath.Dir(img), filepath.Base(img)+".cmds")
		ioutil.WriteFile(script, []byte(strings.Join(cmds, "\n")+"\n"), 0o600)
		defer os.Remove(script)
		if err := exec.Command("debugfs", "-w", "-f", script, img).Run(); err != nil {
			return err
		}
		if !strings.Contains(outOf("debugfs", "-R", "stat "+p, img), "Inode:") {
			return fmt.Errorf("debugfs could not write %s", p)
		}
	case "ntfs":
		if err := run("ntfscp", "-f", img, src.Name(), p); err != nil {
			return err
		}
	case "vfat", "fat":
		if err := run("mcopy", "-o", "-i", img, src.Name(), "::"+p); err != nil {
			return err
		}
	default:
		return fmt.Errorf("unsupported guest file system %s", fs.Type)
	}
	return vm.importFS(d, fs, img)
}

func outOf(name string, args ...string) string {
	out, _ := exec.Command(name, args...).CombinedOutput()
	return string(out)
}

// readGuestFile returns the content of guestPath inside the guest's file system.
func (vm *VM) readGuestFile(guestPath string) ([]byte, error) {
	vm.st.mu.Lock()
	defer vm.st.mu.Unlock()
	fs, p, err := vm.fsFor(guestPath)
	if err != nil {
		return nil, err
	}
	d := vm.st.disks[fs.Disk]
	d.mu.Lock()
	img, err := vm.exportFS(d, fs)
	d.mu.Unlock()
	if err != nil {
		return nil, err
	}
	defer os.Remove(img)
	out := img + ".out"
	defer os.Remove(out)
	switch fs.Type {
	case "ext4", "ext3", "ext2":
		if !strings.Contains(outOf("debugfs", "-R", "stat "+p, img), "Inode:") {
			return nil, os.ErrNotExist
		}
		if err := run("debugfs", "-R", fmt.Sprintf("dump %s %s", p, out), img); err != nil {
			return nil, err
		}
	case "ntfs":
		data, err := exec.Command("ntfscat", img, p).Output()
		if err != nil {
			return nil, os.ErrNotExist
		}
		return data, nil
	case "vfat", "fat":
		if err := run("mcopy", "-i", img, "::"+p, out); err != nil {
			return nil, os.ErrNotExist
		}
	}
	return ioutil.ReadFile(out)
}

// modifyGuestFS runs op on an exported copy of the file system holding guestPath and imports
// the changed blocks back as guest writes.
func (vm *VM) modifyGuestFS(guestPath string, op func(fs *FSSpec, img, p string) error) error {
	vm.st.mu.Lock()
	defer vm.st.mu.Unlock()
	fs, p, err := vm.fsFor(guestPath)
	if err != nil {
		return err
	}
	d := vm.st.disks[fs.Disk]
	d.mu.Lock()
	defer d.mu.Unlock()
	img, err := vm.exportFS(d, fs)
	if err != nil {
		return err
	}
	defer os.Remove(img)
	if err := op(fs, img, p); err != nil {
		return err
	}
	return vm.importFS(d, fs, img)
}

func (vm *VM) deleteGuestFile(guestPath string) error {
	return vm.modifyGuestFS(guestPath, func(fs *FSSpec, img, p string) error {
		switch fs.Type {
		case "ext4", "ext3", "ext2":
			if !strings.Contains(outOf("debugfs", "-R", "stat "+p, img), "Inode:") {
				return os.ErrNotExist
			}
			return run("debugfs", "-w", "-R", "rm "+p, img)
		case "vfat", "fat":
			return run("mdel", "-i", img, "::"+p)
		}
		return nil // NTFS: ntfs-3g has no offline delete tool; the call is recorded only
	})
}

func (vm *VM) makeGuestDir(guestPath string) error {
	return vm.modifyGuestFS(guestPath, func(fs *FSSpec, img, p string) error {
		parts := strings.Split(strings.Trim(p, "/"), "/")
		cur := ""
		for _, part := range parts {
			if part == "" {
				continue
			}
			cur += "/" + part
			switch fs.Type {
			case "ext4", "ext3", "ext2":
				_ = exec.Command("debugfs", "-w", "-R", "mkdir "+cur, img).Run()
			case "vfat", "fat":
				_ = exec.Command("mmd", "-i", img, "::"+cur).Run()
			}
		}
		return nil
	})
}
