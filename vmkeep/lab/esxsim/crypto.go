package main

// vSphere VM Encryption: a disk whose backing carries a keyId (CryptoKeyId) is stored
// encrypted on its datastore, snapshot deltas included. The host decrypts for the VM that
// runs it and for a VM the disk is hot-added to — only if that VM is encrypted itself — but
// the datastore's files are ciphertext to anyone reading them over /folder, and vSphere
// exports no encrypted VM (ExportVm / ExportSnapshot). The lab keeps the data in the clear
// and enciphers what /folder serves of an encrypted disk's extents (AES-CTR under a key
// derived from the keyId, by file offset), so a reader that forgets the encryption gets
// noise, as on a real host.

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/sha256"
	"encoding/binary"
	"net/http"
	"net/url"
	"regexp"
	"strconv"
	"strings"

	"github.com/vmware/govmomi/vim25/types"
)

// encrypted reports whether d is an encrypted disk.
func (d *Disk) encrypted() bool { return d.KeyID != nil && d.KeyID.KeyId != "" }

// encryptedDisk is the first encrypted disk of vm, or nil.
func (vm *VM) encryptedDisk() *Disk {
	for _, d := range vm.st.disks {
		if d.encrypted() {
			return d
		}
	}
	return nil
}

// vmEncrypted reports whether vm itself (its home: config.keyId) is encrypted.
func (vm *VM) vmEncrypted() bool {
	return vm.Config != nil && vm.Config.KeyId != nil && vm.Config.KeyId.KeyId != ""
}

// folderKey is the key of the encrypted disk whose extent /folder serves at ds/rel, or nil.
func (lab *Lab) folderKey(ds, rel string) *types.CryptoKeyId {
	for _, vm := range lab.vmList() {
		vm.st.mu.Lock()
		for _, d := range vm.st.disks {
			if !d.encrypted() {
				continue
			}
			for _, l := range d.layers {
				if l.ds == ds && l.extentRel() == rel {
					key := d.KeyID
					vm.st.mu.Unlock()
					return key
				}
			}
		}
		vm.st.mu.Unlock()
	}
	return nil
}

var rangeStartRe = regexp.MustCompile(`^bytes=(\d+)-`)

// cipherWriter enciphers a /folder response body that starts at file offset pos.
type cipherWriter struct {
	http.ResponseWriter
	block cipher.Block
	pos   int64
}

func (w *cipherWriter) Write(p []byte) (int, error) {
	out := make([]byte, len(p))
	var iv [aes.BlockSize]byte
	binary.BigEndian.PutUint64(iv[8:], uint64(w.pos/aes.BlockSize))
	stream := cipher.NewCTR(w.block, iv[:])
	skip := make([]byte, w.pos%aes.BlockSize)
	stream.XORKeyStream(skip, skip)
	stream.XORKeyStream(out, p)
	n, err := w.ResponseWriter.Write(out)
	w.pos += int64(n)
	return n, err
}

// encipherFolder wraps w when r reads an encrypted disk's extent (see the file comment).
func (lab *Lab) encipherFolder(w http.ResponseWriter, r *http.Request) http.ResponseWriter {
	rel, err := url.PathUnescape(strings.TrimPrefix(r.URL.Path, "/folder/"))
	if err != nil {
		return w
	}
	key := lab.folderKey(r.URL.Query().Get("dsName"), rel)
	if key == nil {
		return w
	}
	sum := sha256.Sum256([]byte(key.ProviderId.Id + "/" + key.KeyId))
	block, _ := aes.NewCipher(sum[:])
	var pos int64
	if m := rangeStartRe.FindStringSubmatch(r.Header.Get("Range")); m != nil {
		pos, _ = strconv.ParseInt(m[1], 10, 64)
	}
	return &cipherWriter{ResponseWriter: w, block: block, pos: pos}
}

// encryptedExportFault: vSphere exports no encrypted VM.
func encryptedExportFault(vm *VM) *labFault {
	if d := vm.encryptedDisk(); d != nil || vm.vmEncrypted() {
		return fault(&types.NotSupported{}, "The operation is not supported on the object: %s is encrypted", vm.Name)
	}
	return nil
}

// applyCrypto encrypts (CryptoSpecEncrypt: the VM's home and every disk, under one key) or
// decrypts (CryptoSpecDecrypt) vm, as vSphere allows it: powered off, without snapshots.
// Caller holds st.mu.
func (vm *VM) applyCrypto(spec types.BaseCryptoSpec) *labFault {
	if f := vm.offlineOnly(); f != nil { // cbt_api.go
		return f
	}
	var key *types.CryptoKeyId
	switch x := spec.(type) {
	case *types.CryptoSpecEncrypt:
		k := x.CryptoKeyId
		key = &k
	case *types.CryptoSpecDecrypt:
	default:
		return fault(&types.NotSupported{}, "vmkeep lab: crypto spec %T is not supported", spec)
	}
	vm.Config.KeyId = key
	for _, d := range vm.st.disks {
		d.mu.Lock()
		d.KeyID = key
		d.mu.Unlock()
	}
	return nil
}
