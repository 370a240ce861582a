package main

// pools.go: resource pools, as a site with DRS has them: "Test" and "Prod" (holding "DB") below
// cluster01's root pool. Restores may be placed in one (vmkeep restore vm --resource-pool).

import (
	"context"
	"fmt"

	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/types"
)

func (lab *Lab) addResourcePools(ctx context.Context) error {
	for _, e := range simulator.Map.All("ClusterComputeResource") {
		cluster := e.(*simulator.ClusterComputeResource)
		root := object.NewResourcePool(lab.client, *cluster.ResourcePool)
		spec := types.DefaultResourceConfigSpec()
		if _, err := root.Create(ctx, "Test", spec); err != nil {
			return fmt.Errorf("resource pool Test: %v", err)
		}
		prod, err := root.Create(ctx, "Prod", spec)
		if err != nil {
			return fmt.Errorf("resource pool Prod: %v", err)
		}
		if _, err := prod.Create(ctx, "DB", spec); err != nil {
			return fmt.Errorf("resource pool Prod/DB: %v", err)
		}
	}
	return nil
}
