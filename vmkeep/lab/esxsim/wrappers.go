package main

// Replacements registered in the simulator's registry: a PropertyCollector whose Fetch does
// not panic on deleted objects (stock vcsim indexes an empty result after RemoveSnapshot +
// WaitForTask), and the guest operation managers.

import (
	"reflect"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
)

// PropertyCollector embeds the stock collector by value (the simulator makes per-session
// copies with reflect.New, so a pointer would be nil there).
type PropertyCollector struct {
	simulator.PropertyCollector
}

// FetchResponse mirrors govmomi's internal type (the element name comes from the type name).
type FetchResponse struct {
	Returnval types.AnyType `xml:"returnval,omitempty,typeattr"`
}

type fetchBody struct {
	Res    *FetchResponse
	Fault_ *soap.Fault
}

func (b *fetchBody) Fault() *soap.Fault { return b.Fault_ }

type faultBody struct{ fault *soap.Fault }

func (b *faultBody) Fault() *soap.Fault { return b.fault }

// Fetch takes the request as interface{} because its type lives in a govmomi-internal package.
func (pc *PropertyCollector) Fetch(ctx *simulator.Context, req interface{}) (res soap.HasFault) {
	defer func() {
		if r := recover(); r != nil {
			this := reflect.ValueOf(req).Elem().FieldByName("This").Interface().(types.ManagedObjectReference)
			if ctx.Map.Get(this) != nil {
				// The property is unset: answer with an empty value, as ESX does.
				res = &fetchBody{Res: &FetchResponse{}}
				return
			}
			res = &faultBody{fault: simulator.Fault("The object has already been deleted or has not been completely created",
				&types.ManagedObjectNotFound{Obj: this})}
		}
	}()
	if val, ok := fetchAsVSphere(req); ok { // vapp.go: VMs in vApps
		return &fetchBody{Res: &FetchResponse{Returnval: val}}
	}
	m := reflect.ValueOf(&pc.PropertyCollector).MethodByName("Fetch")
	out := m.Call([]reflect.Value{reflect.ValueOf(ctx), reflect.ValueOf(req)})
	return out[0].Interface().(soap.HasFault)
}

func (lab *Lab) installWrappers() {
	si := simulator.Map.Get(vim25.ServiceInstance).(*simulator.ServiceInstance)
	pcRef := si.Content.PropertyCollector
	if orig, ok := simulator.Map.Get(pcRef).(*simulator.PropertyCollector); ok {
		simulator.Map.Put(&PropertyCollector{PropertyCollector: *orig})
	}
	pm := &GuestProcessManager{lab: lab}
	pm.Self = types.ManagedObjectReference{Type: "GuestProcessManager", Value: "guestOperationsProcessManager"}
	simulator.Map.Put(pm)
	fm := &GuestFileManager{lab: lab}
	fm.Self = types.ManagedObjectReference{Type: "GuestFileManager", Value: "guestOperationsFileManager"}
	simulator.Map.Put(fm)
	lab.installPerfManager() // perf.go
}
