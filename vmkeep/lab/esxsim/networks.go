package main

// networks.go: the lab's networks, as a real site has them, and the VMs' network adapters.
//
//   - "VM Network": the standard port group every host has (the model's);
//   - distributed switch "dvs-prod" on every host with the port group "dvpg-prod" (the model's
//     DVS0 / DC0_DVPG0, renamed) and its uplink port group;
//   - "Backup LAN": a standard port group only esx03 has (a network the other hosts cannot give a
//     restored VM).
//
// VMs get the adapters their spec names (VMSpec.Nics). vSphere refuses a new adapter on a network
// the VM's host does not see, or on a distributed switch's uplink port group (InvalidDeviceSpec
// "Invalid configuration for device 'N'"); vcsim
// dereferenced a nil network for an unknown name and never looked at the host: refused here
// (unknownNetwork) before the simulator sees the request.

import (
	"context"
	"fmt"
	"html"
	"regexp"
	"strings"

	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"
)

// NicSpec is one network adapter of a lab VM.
type NicSpec struct {
	Type    string `json:"type"`    // vmxnet3 | e1000e | e1000
	Network string `json:"network"` // a network name (standard or distributed port group)
}

const (
	dvsName       = "dvs-prod"
	dvPortgroup   = "dvpg-prod"
	backupLAN     = "Backup LAN"
	backupLANHost = "esx03.lab.local"
)

// arrangeNetworks renames the model's switch and port group and adds "Backup LAN" to esx03.
func (lab *Lab) arrangeNetworks(ctx context.Context) error {
	for _, e := range simulator.Map.All("VmwareDistributedVirtualSwitch") {
		dvs := e.(*simulator.DistributedVirtualSwitch)
		dvs.Entity().Name = dvsName
		dvs.Config.GetDVSConfigInfo().Name = dvsName
		var add []types.DistributedVirtualSwitchHostMemberConfigSpec
		for _, h := range lab.hosts { // every host joins the switch (vSphere: Add and Manage Hosts)
			if simulator.FindReference(dvs.Summary.HostMember, h.Self) == nil {
				add = append(add, types.DistributedVirtualSwitchHostMemberConfigSpec{
					Operation: string(types.ConfigSpecOperationAdd), Host: h.Self})
			}
		}
		if len(add) > 0 {
			task, err := object.NewDistributedVirtualSwitch(lab.client, dvs.Self).Reconfigure(ctx,
				&types.DVSConfigSpec{ConfigVersion: dvs.Config.GetDVSConfigInfo().ConfigVersion, Host: add})
			if err != nil {
				return err
			}
			if err := task.Wait(ctx); err != nil {
				return fmt.Errorf("%s: adding hosts: %v", dvsName, err)
			}
		}
	}
	for _, e := range simulator.Map.All("DistributedVirtualPortgroup") {
		pg := e.(*simulator.DistributedVirtualPortgroup)
		name := dvPortgroup
		if strings.Contains(pg.Name, "DVUplinks") { // as vCenter marks it: no VM may join it
			name = dvsName + "-DVUplinks"
			pg.Config.Uplink = types.NewBool(true)
		}
		pg.Name = name // the network's own name property, and its entity's
		pg.Entity().Name = name
		pg.Config.Name = name
	}
	h := lab.hostByName(backupLANHost)
	ns, err := object.NewHostSystem(lab.client, h.Self).ConfigManager().NetworkSystem(ctx)
	if err != nil {
		return err
	}
	if err := ns.AddPortGroup(ctx, types.HostPortGroupSpec{Name: backupLAN, VswitchName: "vSwitch0",
		Policy: types.HostNetworkPolicy{}}); err != nil {
		return fmt.Errorf("port group %s: %v", backupLAN, err)
	}
	for _, e := range simulator.Map.All("Network") {
		if e.Entity().Name == backupLAN {
			simulator.Map.AppendReference(h, &h.Network, e.Reference())
			net := e.(*mo.Network)
			net.Host = append(net.Host, h.Self)
		}
	}
	return nil
}

// nicDevices: the VM's adapters on the networks its spec names (each must be one its host sees).
func (lab *Lab) nicDevices(ctx context.Context, devices object.VirtualDeviceList, vs VMSpec) (
	object.VirtualDeviceList, error) {
	h := lab.hostByName(vs.Host)
	for _, n := range vs.Nics {
		ref, ok := lab.hostNetwork(h, n.Network)
		if !ok {
			return nil, fmt.Errorf("nic on %q: host %s does not see it", n.Network, h.Name)
		}
		var backing types.BaseVirtualDeviceBackingInfo
		var err error
		if ref.Type == "DistributedVirtualPortgroup" {
			backing, err = object.NewDistributedVirtualPortgroup(lab.client, ref).EthernetCardBackingInfo(ctx)
		} else {
			backing, err = object.NewNetwork(lab.client, ref).EthernetCardBackingInfo(ctx)
		}
		if err != nil {
			return nil, err
		}
		nic, err := devices.CreateEthernetCard(n.Type, backing)
		if err != nil {
			return nil, err
		}
		card := nic.(types.BaseVirtualEthernetCard).GetVirtualEthernetCard()
		card.AddressType, card.MacAddress = "assigned", newMAC("assigned") // macs.go
		card.Connectable = &types.VirtualDeviceConnectInfo{StartConnected: true, Connected: true,
			AllowGuestControl: true}
		devices = append(devices, nic)
	}
	return devices, nil
}

// hostNetwork: the network named name among those host h sees.
func (lab *Lab) hostNetwork(h *simulator.HostSystem, name string) (types.ManagedObjectReference, bool) {
	for _, ref := range h.Network {
		if e, ok := simulator.Map.Get(ref).(mo.Entity); ok && e.Entity().Name == name {
			return ref, true
		}
	}
	return types.ManagedObjectReference{}, false
}

var (
	hostParamRe    = regexp.MustCompile(`<host\b[^>]*type="HostSystem"[^>]*>([^<]*)</host>`)
	nicBackingRe   = regexp.MustCompile(`xsi:type="VirtualEthernetCard(Network|DistributedVirtualPort)BackingInfo">(.*?)</backing>`)
	deviceNameRe   = regexp.MustCompile(`<deviceName>([^<]*)</deviceName>`)
	portgroupKeyRe = regexp.MustCompile(`<portgroupKey>([^<]*)</portgroupKey>`)
)

// placedOn is the host a CreateVM_Task or ImportVApp body names, or nil (another method, no
// host named: vCenter then picks one).
func (lab *Lab) placedOn(method string, body []byte) *simulator.HostSystem {
	if method != "CreateVM_Task" && method != "ImportVApp" {
		return nil
	}
	m := hostParamRe.FindSubmatch(body)
	if m == nil {
		return nil
	}
	for _, h := range lab.hosts {
		if h.Self.Value == string(m[1]) {
			return h
		}
	}
	return nil
}

// unknownNetwork: for a CreateVM_Task or ImportVApp naming its host, the index of the first new adapter whose
// network that host does not see (standard port group by name, distributed port group by key);
// -1 when every adapter's network is there.
func (lab *Lab) unknownNetwork(method string, body []byte) int {
	host := lab.placedOn(method, body)
	if host == nil {
		return -1
	}
	for i, b := range nicBackingRe.FindAllSubmatch(body, -1) {
		if string(b[1]) == "Network" {
			name := deviceNameRe.FindSubmatch(b[2])
			if name == nil {
				return i
			}
			if _, ok := lab.hostNetwork(host, html.UnescapeString(string(name[1]))); !ok {
				return i
			}
			continue
		}
		key := portgroupKeyRe.FindSubmatch(b[2])
		if key == nil {
			return i
		}
		found := false
		for _, ref := range host.Network {
			pg, ok := simulator.Map.Get(ref).(*simulator.DistributedVirtualPortgroup)
			uplink := ok && pg.Config.Uplink != nil && *pg.Config.Uplink
			if ok && pg.Key == string(key[1]) && !uplink {
				found = true
			}
		}
		if !found {
			return i
		}
	}
	return -1
}
