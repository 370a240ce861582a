package main

// Datastore latency as vCenter's PerformanceManager reports it, per host: the realtime counters
// datastore.totalReadLatency.average and datastore.totalWriteLatency.average (ms) of a HostSystem,
// one series per datastore the host mounts, whose instance is the last element of the
// datastore's summary.url (a VMFS datastore's UUID on ESXi).  Every datastore answers
// defaultLatencyMs unless a `ds_latency` fault rule targets it (by name): then both counters
// report the rule's `bytes` as milliseconds while it stands.  Other queries go to the stock
// simulator (random sample data).

import (
	"path"
	"strings"
	"time"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
)

const defaultLatencyMs = 2

// PerfManager embeds the stock manager; QueryPerf answers datastore latency itself.
type PerfManager struct {
	simulator.PerformanceManager
	lab *Lab
}

func (lab *Lab) installPerfManager() {
	si := simulator.Map.Get(types.ManagedObjectReference{Type: "ServiceInstance", Value: "ServiceInstance"}).(*simulator.ServiceInstance)
	if si.Content.PerfManager == nil {
		return
	}
	if orig, ok := simulator.Map.Get(*si.Content.PerfManager).(*simulator.PerformanceManager); ok {
		simulator.Map.Put(&PerfManager{PerformanceManager: *orig, lab: lab})
	}
}

// latencyCounters: the counter keys of datastore.total{Read,Write}Latency.average.
func (p *PerfManager) latencyCounters() map[int32]bool {
	out := map[int32]bool{}
	for _, c := range p.PerfCounter {
		if c.GroupInfo.GetElementDescription().Key == "datastore" && c.RollupType == "average" {
			switch c.NameInfo.GetElementDescription().Key {
			case "totalReadLatency", "totalWriteLatency":
				out[c.Key] = true
			}
		}
	}
	return out
}

func (lab *Lab) datastoreLatency(name string) int64 {
	ms := int64(defaultLatencyMs)
	for _, r := range lab.faults.list() {
		if r.Kind == "ds_latency" && r.Target == name {
			ms = r.Bytes // the newest rule wins
		}
	}
	return ms
}

func (p *PerfManager) QueryPerf(ctx *simulator.Context, req *types.QueryPerf) soap.HasFault {
	latency := p.latencyCounters()
	for _, qs := range req.QuerySpec {
		if qs.Entity.Type != "HostSystem" || len(qs.MetricId) == 0 {
			return p.PerformanceManager.QueryPerf(ctx, req)
		}
		for _, m := range qs.MetricId {
			if !latency[m.CounterId] {
				return p.PerformanceManager.QueryPerf(ctx, req)
			}
		}
	}
	body := &methods.QueryPerfBody{Res: &types.QueryPerfResponse{}}
	now := time.Now()
	for _, qs := range req.QuerySpec {
		metric := &types.PerfEntityMetric{PerfEntityMetricBase: types.PerfEntityMetricBase{Entity: qs.Entity},
			SampleInfo: []types.PerfSampleInfo{{Timestamp: now, Interval: 20}}}
		host, _ := simulator.Map.Get(qs.Entity).(*simulator.HostSystem)
		if host != nil {
			for _, ref := range host.Datastore {
				ds, ok := simulator.Map.Get(ref).(*simulator.Datastore)
				if !ok {
					continue
				}
				instance := datastoreInstance(ds.Datastore)
				for _, m := range qs.MetricId {
					if m.Instance != "" && m.Instance != "*" && m.Instance != instance {
						continue
					}
					metric.Value = append(metric.Value, &types.PerfMetricIntSeries{
						PerfMetricSeries: types.PerfMetricSeries{Id: types.PerfMetricId{CounterId: m.CounterId, Instance: instance}},
						Value:            []int64{p.lab.datastoreLatency(ds.Name)},
					})
				}
			}
		}
		body.Res.Returnval = append(body.Res.Returnval, metric)
	}
	return body
}

// datastoreInstance: the instance naming a datastore in its counters (summary.url's last part).
func datastoreInstance(ds mo.Datastore) string {
	return path.Base(strings.TrimRight(ds.Summary.Url, "/"))
}
