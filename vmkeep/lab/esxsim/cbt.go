package main

// Changed-block tracking as ESX does it: a changeId "<uuid>/<n>" names the disk state at
// snapshot n; QueryChangedDiskAreas returns the areas written between a changeId and a
// snapshot, paged by startOffset; "*" returns the allocated areas. Disabling/enabling CBT,
// storage migration and disk resize start a new uuid so older changeIds fail with FileFault.
//
// Strict like ESX (VDDK guide, KB 1020128): tracking enabled by ReconfigVM is not active until
// the next stun (snapshot create): until then writes are not recorded and the backing has no
// changeId. "*" is only right on VMFS for disks whose CBT was enabled with no snapshots present:
// on NFS it answers one extent covering the whole disk; with snapshots present at enable time it
// answers the delta layers' allocation only (wrong: the base disk's data is missing).

import (
	"crypto/rand"
	"fmt"
	"strconv"
	"strings"
)

const cbtBlock = 64 * 1024

type tracker struct {
	uuid          string
	epoch         int
	changes       map[int]map[int64]bool // epoch -> changed blocks
	active        bool                   // false from enable until the next stun
	snapsAtEnable bool                   // the VM had snapshots when CBT was enabled
}

// newTracker starts a new tracking identity; active=false models ReconfigVM's enable, which
// waits for a stun.
func newTracker(active bool) *tracker {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	var parts []string
	for _, x := range b {
		parts = append(parts, fmt.Sprintf("%02x", x))
	}
	u := strings.Join(parts[:8], " ") + "-" + strings.Join(parts[8:], " ")
	return &tracker{uuid: u, changes: map[int]map[int64]bool{}, active: active}
}

// changeID is "" until tracking is active (no ctk opened yet).
func (t *tracker) changeID() string {
	if !t.active {
		return ""
	}
	return fmt.Sprintf("%s/%d", t.uuid, t.epoch)
}

// snapshot closes the current epoch and returns the changeId of the state just frozen; the
// stun of the first snapshot after enabling activates tracking.
func (t *tracker) snapshot() string {
	t.active = true
	t.epoch++
	return t.changeID()
}

func (t *tracker) record(off, length int64) {
	if !t.active {
		return
	}
	m := t.changes[t.epoch]
	if m == nil {
		m = map[int64]bool{}
		t.changes[t.epoch] = m
	}
	for b := off / cbtBlock; b*cbtBlock < off+length; b++ {
		m[b] = true
	}
}

// parseChangeID splits "<uuid>/<n>".
func parseChangeID(id string) (string, int, bool) {
	i := strings.LastIndex(id, "/")
	if i < 0 {
		return "", 0, false
	}
	n, err := strconv.Atoi(id[i+1:])
	if err != nil {
		return "", 0, false
	}
	return id[:i], n, true
}

// changedSince returns the blocks written in epochs [from, to).
func (t *tracker) changedSince(from, to int, capacity int64) []extent {
	marks := map[int64]bool{}
	for e := from; e < to; e++ {
		for b := range t.changes[e] {
			marks[b] = true
		}
	}
	return blocksToExtents(marks, cbtBlock, capacity)
}
