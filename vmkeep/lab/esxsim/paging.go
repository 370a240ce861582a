package main

// Property collector paging, as vCenter does it (stock vcsim 0.24 ignores maxObjects and has no
// ContinueRetrievePropertiesEx): RetrievePropertiesEx answers at most
// min(options.maxObjects, pageCap) objects and a token when more remain;
// ContinueRetrievePropertiesEx(token) hands out the next page; CancelRetrievePropertiesEx drops
// the rest. A client that ignores the token misses objects, as on a real vCenter with thousands
// of VMs. Tokens are single-use and vanish with their last page.

import (
	"fmt"
	"sync"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
)

// pageCap is the most objects one page ever holds (vCenter also caps what it sends).
const pageCap = 500

type pageStore struct {
	mu   sync.Mutex
	next int
	rest map[string]pending
}

type pending struct {
	objects []types.ObjectContent
	size    int
}

var pages = &pageStore{rest: map[string]pending{}}

func pageSize(opts types.RetrieveOptions) int {
	if opts.MaxObjects > 0 && int(opts.MaxObjects) < pageCap {
		return int(opts.MaxObjects)
	}
	return pageCap
}

// cut returns the first page of objects and, when more remain, a token for the rest.
func (s *pageStore) cut(objects []types.ObjectContent, size int) *types.RetrieveResult {
	res := &types.RetrieveResult{Objects: objects}
	if len(objects) <= size {
		return res
	}
	res.Objects = objects[:size]
	s.mu.Lock()
	s.next++
	res.Token = fmt.Sprintf("vmkeep-lab-page-%d", s.next)
	s.rest[res.Token] = pending{objects: objects[size:], size: size}
	s.mu.Unlock()
	return res
}

func (pc *PropertyCollector) RetrievePropertiesEx(ctx *simulator.Context, req *types.RetrievePropertiesEx) soap.HasFault {
	out := pc.PropertyCollector.RetrievePropertiesEx(ctx, req)
	body, ok := out.(*methods.RetrievePropertiesExBody)
	if !ok || body.Fault_ != nil || body.Res == nil || body.Res.Returnval == nil {
		return out
	}
	body.Res.Returnval = pages.cut(asVSphereShows(body.Res.Returnval.Objects), pageSize(req.Options)) // vapp.go
	return body
}

// RetrieveProperties answers every object at once (no paging), as vSphere shows them (vapp.go).
func (pc *PropertyCollector) RetrieveProperties(ctx *simulator.Context, req *types.RetrieveProperties) soap.HasFault {
	out := pc.PropertyCollector.RetrieveProperties(ctx, req)
	if body, ok := out.(*methods.RetrievePropertiesBody); ok && body.Fault_ == nil && body.Res != nil {
		body.Res.Returnval = asVSphereShows(body.Res.Returnval)
	}
	return out
}

func (pc *PropertyCollector) ContinueRetrievePropertiesEx(ctx *simulator.Context, req *types.ContinueRetrievePropertiesEx) soap.HasFault {
	body := &methods.ContinueRetrievePropertiesExBody{}
	pages.mu.Lock()
	p, ok := pages.rest[req.Token]
	delete(pages.rest, req.Token)
	pages.mu.Unlock()
	if !ok {
		body.Fault_ = simulator.Fault("A specified parameter was not correct: token", &types.InvalidArgument{InvalidProperty: "token"})
		return body
	}
	res := pages.cut(p.objects, p.size)
	body.Res = &types.ContinueRetrievePropertiesExResponse{Returnval: *res}
	return body
}

func (pc *PropertyCollector) CancelRetrievePropertiesEx(ctx *simulator.Context, req *types.CancelRetrievePropertiesEx) soap.HasFault {
	pages.mu.Lock()
	delete(pages.rest, req.Token)
	pages.mu.Unlock()
	return &methods.CancelRetrievePropertiesExBody{Res: &types.CancelRetrievePropertiesExResponse{}}
}
