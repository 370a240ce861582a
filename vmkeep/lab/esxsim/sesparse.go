package main

// SEsparse ("space-efficient sparse", createType seSparse) delta extents, as ESXi writes for
// snapshot deltas on VMFS6 datastores (NAME-000001-sesparse.vmdk). The on-disk format is the
// one qemu's block/vmdk.c reads (VMDKSESparseConstHeader / VMDKSESparseVolatileHeader):
//
//	sector 0          const header: magic 0xcafebabe, version 0x200000001, capacity (sectors),
//	                  grain size 8 sectors (4 KiB), grain table size 64 sectors (4096 entries),
//	                  flags 0, then offset/size (sectors) of: volatile header, journal header,
//	                  journal, grain directory, grain tables, free bitmap, backmap, grains
//	sector 1          volatile header: magic 0xcafecafe, free_gt_number, next txn, replay_journal 0
//	sector 2, 3..63   journal header and journal (empty: the lab never leaves a dirty journal)
//	grain directory   uint64 per grain table: 0 = none, 0x1000000000000000|n = table n of the
//	                  grain tables area (n*64 sectors from its start)
//	grain tables      uint64 per grain, type in the top nibble: 0 unallocated (ask the parent),
//	                  1 unmapped (the guest trimmed it: reads zeros), 2 zero, 3 allocated with
//	                  cluster c stored as ((c & 0xfff) << 48) | (c >> 12); data at
//	                  grains_offset + c*8 sectors
//	free bitmap, backmap   reserved, left zero (qemu and vmkeep do not read them)
//
// Grain tables and grains are allocated in order of first write.

import (
	"encoding/binary"
	"os"
)

const (
	sesMagic        = 0xcafebabe
	sesVolMagic     = 0xcafecafe
	sesVersion      = 0x0000000200000001
	sesGrainSecs    = 8
	sesGTSecs       = 64
	sesGTEntries    = sesGTSecs * sectorSize / 8 // 4096
	sesGDPresent    = 0x1000000000000000
	sesGrainUnmap   = 0x1000000000000000
	sesGrainZero    = 0x2000000000000000
	sesGrainData    = 0x3000000000000000
	sesTypeMask     = 0xf000000000000000
	sesJournalStart = 3
	sesGDStart      = 64
)

type sesparse struct {
	f           *os.File
	capSecs     int64
	gdOff       int64 // sectors
	gtOff       int64
	grainsOff   int64
	gd          []uint64
	gts         map[int][]uint64
	nextGT      uint64
	nextCluster int64
}

func (s *sesparse) grainBytes() int64 { return sesGrainSecs * sectorSize }
func (s *sesparse) file() *os.File    { return s.f }

func ceilDiv(a, b int64) int64 { return (a + b - 1) / b }

func createSESparse(path string, capacity int64) (*sesparse, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, err
	}
	capSecs := ceilDiv(capacity, sectorSize)
	grains := ceilDiv(capSecs, sesGrainSecs)
	nGT := ceilDiv(grains, sesGTEntries)
	gdSecs := ceilDiv(nGT*8, sectorSize)
	gtOff := sesGDStart + ceilDiv(gdSecs, sesGTSecs)*sesGTSecs
	gtSecs := nGT * sesGTSecs
	bitmapOff, bitmapSecs := gtOff+gtSecs, ceilDiv(ceilDiv(grains, 8), sectorSize)
	backOff, backSecs := bitmapOff+bitmapSecs, ceilDiv(grains*8, sectorSize)
	grainsOff := ceilDiv(backOff+backSecs, sesGrainSecs) * sesGrainSecs
	s := &sesparse{f: f, capSecs: capSecs, gdOff: sesGDStart, gtOff: gtOff, grainsOff: grainsOff,
		gd: make([]uint64, nGT), gts: map[int][]uint64{}}
	h := make([]byte, sectorSize)
	le := binary.LittleEndian
	for i, v := range []uint64{
		sesMagic, sesVersion, uint64(capSecs), sesGrainSecs, sesGTSecs, 0, 0, 0, 0, 0,
		1, 1, // volatile header
		2, 1, // journal header
		sesJournalStart, sesGDStart - sesJournalStart, // journal
		uint64(sesGDStart), uint64(gdSecs),
		uint64(gtOff), uint64(gtSecs),
		uint64(bitmapOff), uint64(bitmapSecs),
		uint64(backOff), uint64(backSecs),
		uint64(grainsOff), uint64(grains * sesGrainSecs),
	} {
		le.PutUint64(h[i*8:], v)
	}
	if _, err := f.WriteAt(h, 0); err == nil {
		err = s.writeVolatile()
	}
	if err == nil { // journal header, journal and an empty grain directory: zeros
		_, err = f.WriteAt(make([]byte, (sesGDStart+gdSecs-2)*sectorSize), 2*sectorSize)
	}
	if err != nil {
		f.Close()
		return nil, err
	}
	return s, nil
}

func (s *sesparse) writeVolatile() error {
	v := make([]byte, sectorSize)
	binary.LittleEndian.PutUint64(v[0:], sesVolMagic)
	binary.LittleEndian.PutUint64(v[8:], s.nextGT) // free_gt_number
	_, err := s.f.WriteAt(v, sectorSize)
	return err
}

func (s *sesparse) entry(g int64) uint64 {
	gt, ok := s.gts[int(g/sesGTEntries)]
	if !ok {
		return 0
	}
	return gt[g%sesGTEntries]
}

func (s *sesparse) lookup(g int64) (grainKind, int64) {
	e := s.entry(g)
	switch e & sesTypeMask {
	case sesGrainData:
		c := int64((e&0x0fff000000000000)>>48 | (e&0x0000ffffffffffff)<<12)
		return grainData, (s.grainsOff + c*sesGrainSecs) * sectorSize
	case sesGrainUnmap, sesGrainZero:
		return grainZero, 0
	}
	return grainUnalloc, 0
}

// setEntry writes grain g's table entry, allocating its grain table first if needed.
func (s *sesparse) setEntry(g int64, e uint64) error {
	t := int(g / sesGTEntries)
	gt, ok := s.gts[t]
	if !ok {
		gt = make([]uint64, sesGTEntries)
		s.gts[t] = gt
		n := s.nextGT
		s.nextGT++
		if _, err := s.f.WriteAt(make([]byte, sesGTSecs*sectorSize), s.tableOffset(n)); err != nil {
			return err
		}
		s.gd[t] = sesGDPresent | n
		var b [8]byte
		binary.LittleEndian.PutUint64(b[:], s.gd[t])
		if _, err := s.f.WriteAt(b[:], s.gdOff*sectorSize+int64(t)*8); err != nil {
			return err
		}
		if err := s.writeVolatile(); err != nil {
			return err
		}
	}
	gt[g%sesGTEntries] = e
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], e)
	_, err := s.f.WriteAt(b[:], s.tableOffset(s.gd[t]&0xffffffff)+(g%sesGTEntries)*8)
	return err
}

func (s *sesparse) tableOffset(n uint64) int64 {
	return (s.gtOff + int64(n)*sesGTSecs) * sectorSize
}

// allocGrain gives grain g a new cluster (caller fills it) and returns its byte offset.
func (s *sesparse) allocGrain(g int64) (int64, error) {
	c := s.nextCluster
	s.nextCluster++
	e := uint64(sesGrainData) | uint64(c&0xfff)<<48 | uint64(c>>12)
	off := (s.grainsOff + c*sesGrainSecs) * sectorSize
	if _, err := s.f.WriteAt(make([]byte, sesGrainSecs*sectorSize), off); err != nil {
		return 0, err
	}
	return off, s.setEntry(g, e)
}

// unmap marks grain g "unmapped" (type 1): the guest trimmed it; it reads zeros.
func (s *sesparse) unmap(g int64) error { return s.setEntry(g, sesGrainUnmap) }

// allocated lists the grains this delta holds (data, zero or unmapped), ascending.
func (s *sesparse) allocated() []int64 {
	var out []int64
	for t := range s.gd {
		gt, ok := s.gts[t]
		if !ok {
			continue
		}
		for i, e := range gt {
			if e != 0 {
				out = append(out, int64(t)*sesGTEntries+int64(i))
			}
		}
	}
	return out
}
