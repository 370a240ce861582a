package main

// Switchable faults. A rule has a kind, an optional target (VM name, SOAP method, host or
// datastore-path substring), a count (0 = until cleared) and kind-specific parameters.
//
// Kinds: snapshot_create, quiesce_fail, quiesce_timeout (delay), remove_snapshot, remove_slow
// (delay: RemoveSnapshot takes that long, other snapshot operations meanwhile TaskInProgress),
// soap_fault (target = SOAP method), ds_slow (delay per MiB), ds_short (bytes), ds_drop (bytes),
// guest_program (target = program path substring, exit_code), cbt_lie (QueryChangedDiskAreas
// with a real changeId omits every other changed area; target = VM name), free_licence (the
// hosts run a free ESXi licence: write methods fail with RestrictedVersion until cleared;
// server.go's freeLicenceRefuses), ds_full (target = datastore name, exactly; bytes = the free
// space its summary reports while the rule stands; dsspace.go).

import (
	"strings"
	"sync"
)

type faultRule struct {
	ID       int     `json:"id"`
	Kind     string  `json:"kind"`
	Target   string  `json:"target,omitempty"`
	Count    int     `json:"count"`
	Delay    float64 `json:"delay,omitempty"`
	Bytes    int64   `json:"bytes,omitempty"`
	ExitCode int     `json:"exit_code,omitempty"`
	Message  string  `json:"message,omitempty"`
	Hits     int     `json:"hits"`
}

func (r *faultRule) msg(def string) string {
	if r.Message != "" {
		return r.Message
	}
	return def
}

type faultSet struct {
	mu    sync.Mutex
	next  int
	rules []*faultRule
}

func newFaultSet() *faultSet { return &faultSet{next: 1} }

func (f *faultSet) add(r faultRule) *faultRule {
	f.mu.Lock()
	defer f.mu.Unlock()
	r.ID = f.next
	f.next++
	f.rules = append(f.rules, &r)
	return &r
}

func (f *faultSet) clear(kind string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if kind == "" {
		f.rules = nil
		return
	}
	var keep []*faultRule
	for _, r := range f.rules {
		if r.Kind != kind {
			keep = append(keep, r)
		}
	}
	f.rules = keep
}

func (f *faultSet) list() []faultRule {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := []faultRule{}
	for _, r := range f.rules {
		out = append(out, *r)
	}
	return out
}

func matches(r *faultRule, kind, target string) bool {
	if r.Kind != kind {
		return false
	}
	return r.Target == "" || r.Target == target || (target != "" && strings.Contains(target, r.Target))
}

// peek returns a matching rule without consuming it.
func (f *faultSet) peek(kind, target string) *faultRule {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, r := range f.rules {
		if matches(r, kind, target) {
			c := *r
			return &c
		}
	}
	return nil
}

// take consumes one use of a matching rule (rules with count 0 never run out).
func (f *faultSet) take(kind, target string) *faultRule {
	f.mu.Lock()
	defer f.mu.Unlock()
	for i, r := range f.rules {
		if !matches(r, kind, target) {
			continue
		}
		r.Hits++
		c := *r
		if r.Count > 0 {
			r.Count--
			if r.Count == 0 {
				f.rules = append(f.rules[:i], f.rules[i+1:]...)
			}
		}
		return &c
	}
	return nil
}
