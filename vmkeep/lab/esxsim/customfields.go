package main

// Custom attributes (CustomFieldsManager) as vCenter keeps them:
//
//   - AddCustomFieldDef needs Global.ManageCustomFields, SetField needs Global.SetCustomField
//     on the entity (NoPermission naming it otherwise; privileges.go's guardSOAP);
//   - SetField replaces the entity's value for that key: stock vcsim appended a second value
//     each time, so a VM backed up every night carried one value per night.

import (
	"strconv"
	"strings"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"
)

// setFieldEntity is the entity a SetField request names.
func setFieldEntity(ref types.ManagedObjectReference, body []byte) types.ManagedObjectReference {
	if e := xmlRef(body, "entity"); e.Value != "" {
		return e
	}
	return ref
}

// dropFieldValue removes the entity's current value for the key a SetField request names, so
// that the simulator's append becomes a replace.
func dropFieldValue(body []byte) {
	ref := setFieldEntity(types.ManagedObjectReference{}, body)
	if ref.Value == "" {
		return
	}
	key, err := strconv.Atoi(strings.TrimSpace(xmlText(body, "key")))
	if err != nil {
		return
	}
	obj, ok := simulator.Map.Get(ref).(mo.Entity)
	if !ok {
		return
	}
	entity := obj.Entity()
	simulator.Map.WithLock(entity, func() {
		entity.CustomValue = withoutKey(entity.CustomValue, int32(key))
		entity.Value = withoutKey(entity.Value, int32(key))
	})
}

func withoutKey(values []types.BaseCustomFieldValue, key int32) []types.BaseCustomFieldValue {
	out := values[:0:0]
	for _, v := range values {
		if v.GetCustomFieldValue().Key != key {
			out = append(out, v)
		}
	}
	return out
}
