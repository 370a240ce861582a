package main

// VMFS sparse ("COWD", createType vmfsSparse) delta extents, as ESX writes for snapshot deltas
// on VMFS5 and NFS datastores (NAME-000001-delta.vmdk). Layout: a 2048-byte header, the grain
// directory at sector 4, grain tables (4096 uint32 sector offsets each) and grains appended as
// needed. Real ESXi uses 1-sector (512-byte) grains; the grain size is a parameter here.
// Unallocated grains fall through to the parent disk; COWD has no "zero" or "unmapped" grain.

import (
	"encoding/binary"
	"fmt"
	"os"
)

const (
	sectorSize     = 512
	cowdGrainSecs  = 1 // 512-byte grains, as ESXi writes vmfsSparse redo logs
	cowdGTEntries  = 4096
	cowdHeaderSecs = 4
)

type cowd struct {
	f         *os.File
	capSecs   int64
	grainSecs int64
	gd        []uint32
	gts       map[int][]uint32
	freeSect  int64
}

func (c *cowd) grainBytes() int64 { return c.grainSecs * sectorSize }
func (c *cowd) file() *os.File    { return c.f }

func createCowd(path string, capacity, grainSecs int64) (*cowd, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, err
	}
	capSecs := (capacity + sectorSize - 1) / sectorSize
	nGD := (capSecs + cowdGTEntries*grainSecs - 1) / (cowdGTEntries * grainSecs)
	gdSecs := (nGD*4 + sectorSize - 1) / sectorSize
	c := &cowd{f: f, capSecs: capSecs, grainSecs: grainSecs, gd: make([]uint32, nGD),
		gts: map[int][]uint32{}, freeSect: cowdHeaderSecs + gdSecs}
	if err := c.writeHeader(); err != nil {
		f.Close()
		return nil, err
	}
	if err := c.writeGD(); err != nil {
		f.Close()
		return nil, err
	}
	return c, nil
}

func (c *cowd) writeHeader() error {
	h := make([]byte, cowdHeaderSecs*sectorSize)
	copy(h[0:4], "COWD")
	le := binary.LittleEndian
	le.PutUint32(h[4:], 1)                  // version
	le.PutUint32(h[8:], 3)                  // flags
	le.PutUint32(h[12:], uint32(c.capSecs)) // capacity in sectors
	le.PutUint32(h[16:], uint32(c.grainSecs))
	le.PutUint32(h[20:], cowdHeaderSecs) // grain directory sector
	le.PutUint32(h[24:], uint32(len(c.gd)))
	le.PutUint32(h[28:], uint32(c.freeSect))
	_, err := c.f.WriteAt(h, 0)
	return err
}

func (c *cowd) writeGD() error {
	b := make([]byte, len(c.gd)*4)
	for i, v := range c.gd {
		binary.LittleEndian.PutUint32(b[i*4:], v)
	}
	_, err := c.f.WriteAt(b, cowdHeaderSecs*sectorSize)
	return err
}

// lookup returns where grain g is: data at a byte offset of the file, or unallocated.
func (c *cowd) lookup(g int64) (grainKind, int64) {
	gt, ok := c.gts[int(g/cowdGTEntries)]
	if !ok || gt[g%cowdGTEntries] == 0 {
		return grainUnalloc, 0
	}
	return grainData, int64(gt[g%cowdGTEntries]) * sectorSize
}

// unmap is not a COWD operation: the caller writes zeros instead.
func (c *cowd) unmap(g int64) error { return errNoUnmap }

// allocGrain allocates grain g (caller fills it) and returns its byte offset in the file.
func (c *cowd) allocGrain(g int64) (int64, error) {
	gdi := int(g / cowdGTEntries)
	gt, ok := c.gts[gdi]
	if !ok {
		gt = make([]uint32, cowdGTEntries)
		c.gts[gdi] = gt
		c.gd[gdi] = uint32(c.freeSect)
		if _, err := c.f.WriteAt(make([]byte, cowdGTEntries*4), c.freeSect*sectorSize); err != nil {
			return 0, err
		}
		c.freeSect += cowdGTEntries * 4 / sectorSize
		if err := c.writeGD(); err != nil {
			return 0, err
		}
	}
	sect := c.freeSect
	c.freeSect += c.grainSecs
	gt[g%cowdGTEntries] = uint32(sect)
	var b [4]byte
	binary.LittleEndian.PutUint32(b[:], uint32(sect))
	if _, err := c.f.WriteAt(b[:], int64(c.gd[gdi])*sectorSize+(g%cowdGTEntries)*4); err != nil {
		return 0, err
	}
	binary.LittleEndian.PutUint32(b[:], uint32(c.freeSect)) // header: next free sector
	_, err := c.f.WriteAt(b[:], 28)
	return sect * sectorSize, err
}

// allocated lists allocated grain numbers in ascending order.
func (c *cowd) allocated() []int64 {
	var out []int64
	for gdi := 0; gdi < len(c.gd); gdi++ {
		gt, ok := c.gts[gdi]
		if !ok {
			continue
		}
		for i, v := range gt {
			if v != 0 {
				out = append(out, int64(gdi)*cowdGTEntries+int64(i))
			}
		}
	}
	return out
}

func (c *cowd) String() string { return fmt.Sprintf("cowd(%s)", c.f.Name()) }
