package main

// Lab users and privileges. The spec's admin user holds every privilege; each extra user of
// spec.Users (e.g. backup-restricted@vsphere.local) holds every privilege except the ones it
// "lacks". Like vCenter:
//
//   - Login checks the user name and password against that table (InvalidLogin otherwise);
//   - CreateVM_Task and ImportVApp of a VM with network adapters need Network.Assign on the
//     (first) adapter's network;
//   - QueryChangedDiskAreas needs VirtualMachine.Provisioning.DiskRandomRead on the VM,
//     SearchDatastore[SubFolders]_Task needs Datastore.Browse on the browser's datastore, and a
//     /folder GET/HEAD needs Datastore.Browse: without it the SOAP calls answer a NoPermission
//     fault naming the object and the privilege id (missingPrivileges is left out: the API
//     version vcsim announces predates it), the
//     /folder request answers 403 naming the privilege;
//   - AddCustomFieldDef needs Global.ManageCustomFields, SetField Global.SetCustomField on the
//     entity (customfields.go);
//   - a VM's reconfiguration and snapshots need the VirtualMachine.Config.* and
//     VirtualMachine.State.* privileges of what they change (config_privileges.go);
//   - AuthorizationManager.HasPrivilegeOnEntities / HasPrivilegeOnEntity (by session) and
//     HasUserPrivilegeOnEntities / FetchUserPrivilegeOnEntities (by user name) answer truthfully
//     (stock vcsim grants everything to everyone).
//
// Sessions are mapped to users when Login sets the session cookie (the cookie value is the
// session key, which is also what HasPrivilegeOnEntities takes as sessionId).

import (
	"bytes"
	"encoding/xml"
	"fmt"
	"html"
	"net/http"
	"strings"
	"sync"

	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
)

// UserSpec is an extra lab user (spec "users"); Lacks lists the privilege ids it does not hold.
type UserSpec struct {
	Name     string   `json:"name"`
	Password string   `json:"password"`
	Lacks    []string `json:"lacks,omitempty"`
}

type userTable struct {
	mu       sync.Mutex
	password map[string]string
	lacks    map[string]map[string]bool
	bySess   map[string]string // session key (cookie) -> user name
}

var labUsers = &userTable{password: map[string]string{}, lacks: map[string]map[string]bool{},
	bySess: map[string]string{}}

func (t *userTable) user(session string) string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.bySess[session]
}

func (t *userTable) lacking(user, priv string) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.lacks[user][priv]
}

// installPrivileges registers the users and the truthful AuthorizationManager. It clears the
// simulator's single-user check (svc.Listen.User): the lab's Login hook checks credentials.
func (lab *Lab) installPrivileges(svc *simulator.Service) {
	labUsers.mu.Lock()
	labUsers.password[lab.spec.User] = lab.spec.Password
	labUsers.lacks[lab.spec.User] = map[string]bool{}
	for _, u := range lab.spec.Users {
		labUsers.password[u.Name] = u.Password
		labUsers.lacks[u.Name] = map[string]bool{}
		for _, p := range u.Lacks {
			labUsers.lacks[u.Name][p] = true
		}
	}
	labUsers.mu.Unlock()
	svc.Listen.User = nil
	installAuthorizationManager()
}

// guardSOAP runs before the simulator sees a SOAP call. It returns the writer to use, and true
// when it answered the call itself (a refused login or a NoPermission fault).
func (lab *Lab) guardSOAP(w http.ResponseWriter, r *http.Request, method string, body []byte) (http.ResponseWriter, bool) {
	switch method {
	case "Login":
		user, pass := xmlText(body, "userName"), xmlText(body, "password")
		labUsers.mu.Lock()
		want, ok := labUsers.password[user]
		labUsers.mu.Unlock()
		if !ok || want != pass || pass == "" {
			writeSoapFault(w, "Cannot complete login due to an incorrect user name or password.", "InvalidLogin", "")
			return w, true
		}
		return &loginWriter{ResponseWriter: w, user: user}, false
	case "QueryChangedDiskAreas":
		return w, lab.refuse(w, r, body, "VirtualMachine.Provisioning.DiskRandomRead", nil)
	case "SearchDatastore_Task", "SearchDatastoreSubFolders_Task":
		return w, lab.refuse(w, r, body, "Datastore.Browse", browserDatastore)
	case "AddCustomFieldDef": // customfields.go
		return w, lab.refuse(w, r, body, "Global.ManageCustomFields", nil)
	case "SetField":
		if lab.refuse(w, r, body, "Global.SetCustomField", setFieldEntity) {
			return w, true
		}
		dropFieldValue(body)
		return w, false
	case "CreateVM_Task", "ImportVApp":
		if nicBackingRe.Match(body) { // networks.go: a new VM with network adapters
			return w, lab.refuse(w, r, body, "Network.Assign", firstNicNetwork)
		}
	case "ReconfigVM_Task": // config_privileges.go
		for _, priv := range reconfigPrivileges(body) {
			if lab.refuse(w, r, body, priv, nil) {
				return w, true
			}
		}
	}
	if priv, ok := snapshotPrivileges[method]; ok { // config_privileges.go
		return w, lab.refuse(w, r, body, priv, snapshotVM)
	}
	return w, false
}

// refuse answers NoPermission when the session's user lacks priv (on _this, or on what entity
// maps _this to).
func (lab *Lab) refuse(w http.ResponseWriter, r *http.Request, body []byte, priv string,
	entity func(types.ManagedObjectReference, []byte) types.ManagedObjectReference) bool {
	c, err := r.Cookie(soap.SessionCookieName)
	if err != nil {
		return false
	}
	user := labUsers.user(c.Value)
	if user == "" || !labUsers.lacking(user, priv) {
		return false
	}
	this := xmlRef(body, "_this")
	if entity != nil {
		this = entity(this, body)
	}
	ref := fmt.Sprintf(`<object type="%s">%s</object>`, xmlEscape(this.Type), xmlEscape(this.Value))
	writeSoapFault(w, "Permission to perform this operation was denied.", "NoPermission",
		ref+"<privilegeId>"+priv+"</privilegeId>")
	return true
}

// browserDatastore is the datastore a search names ("[ds] path"), else the browser itself.
func browserDatastore(ref types.ManagedObjectReference, body []byte) types.ManagedObjectReference {
	name, _ := splitDSPath(xmlText(body, "datastorePath"))
	for _, e := range simulator.Map.All("Datastore") {
		if ds := e.(*simulator.Datastore); ds.Name == name && !inDC2[ds.Self] {
			return ds.Self
		}
	}
	return ref
}

// firstNicNetwork: the network of the request's first new network adapter (a standard port
// group by name, a distributed one by key), whose Network.Assign vCenter checks.
func firstNicNetwork(ref types.ManagedObjectReference, body []byte) types.ManagedObjectReference {
	b := nicBackingRe.FindSubmatch(body)
	if b == nil {
		return ref
	}
	for _, e := range simulator.Map.All("Network") {
		if name := deviceNameRe.FindSubmatch(b[2]); name != nil && e.Entity().Name == html.UnescapeString(string(name[1])) {
			return e.Reference()
		}
	}
	for _, e := range simulator.Map.All("DistributedVirtualPortgroup") {
		pg := e.(*simulator.DistributedVirtualPortgroup)
		if key := portgroupKeyRe.FindSubmatch(b[2]); key != nil && pg.Key == string(key[1]) {
			return pg.Self
		}
	}
	return ref
}

// denyFolder answers 403 to a /folder read by a user without Datastore.Browse.
func (lab *Lab) denyFolder(w http.ResponseWriter, r *http.Request) bool {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		return false
	}
	user := ""
	if c, err := r.Cookie(soap.SessionCookieName); err == nil {
		user = labUsers.user(c.Value)
	} else if u, _, ok := r.BasicAuth(); ok {
		user = u
	}
	return lab.denyFolderFor(w, r, user)
}

// denyFolderFor refuses a datastore read (403) when user lacks Datastore.Browse; host
// endpoints call it with the user of the request's service ticket.
func (lab *Lab) denyFolderFor(w http.ResponseWriter, r *http.Request, user string) bool {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		return false
	}
	if user == "" || !labUsers.lacking(user, "Datastore.Browse") {
		return false
	}
	w.Header().Set("Content-Type", "text/plain")
	w.WriteHeader(http.StatusForbidden)
	fmt.Fprintf(w, "Permission to perform this operation was denied. NoPermission: privilege Datastore.Browse on datastore %s\n",
		r.URL.Query().Get("dsName"))
	return true
}

type loginWriter struct {
	http.ResponseWriter
	user string
}

func (w *loginWriter) WriteHeader(code int) {
	for _, c := range w.Header()["Set-Cookie"] {
		if strings.HasPrefix(c, soap.SessionCookieName+"=") {
			v := strings.SplitN(strings.TrimPrefix(c, soap.SessionCookieName+"="), ";", 2)[0]
			labUsers.mu.Lock()
			labUsers.bySess[v] = w.user
			labUsers.mu.Unlock()
		}
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *loginWriter) Write(p []byte) (int, error) { return w.ResponseWriter.Write(p) }

// xmlText is the text of the first element named local in a SOAP body.
func xmlText(body []byte, local string) string {
	d := xml.NewDecoder(bytes.NewReader(body))
	for {
		tok, err := d.Token()
		if err != nil {
			return ""
		}
		if se, ok := tok.(xml.StartElement); ok && se.Name.Local == local {
			var s string
			if d.DecodeElement(&s, &se) != nil {
				return ""
			}
			return s
		}
	}
}

// xmlRef is the managed object reference held by the first element named local.
func xmlRef(body []byte, local string) types.ManagedObjectReference {
	d := xml.NewDecoder(bytes.NewReader(body))
	for {
		tok, err := d.Token()
		if err != nil {
			return types.ManagedObjectReference{}
		}
		if se, ok := tok.(xml.StartElement); ok && se.Name.Local == local {
			ref := types.ManagedObjectReference{}
			for _, a := range se.Attr {
				if a.Name.Local == "type" {
					ref.Type = a.Value
				}
			}
			var s string
			_ = d.DecodeElement(&s, &se)
			ref.Value = strings.TrimSpace(s)
			return ref
		}
	}
}

// ---- AuthorizationManager ---------------------------------------------------------------------

// AuthorizationManager embeds the stock manager by value (as PropertyCollector does) and answers
// the privilege queries per user.
type AuthorizationManager struct {
	simulator.AuthorizationManager
	all []string // every privilege id the lab knows (the Admin role's)
}

func (m *AuthorizationManager) granted(user, priv string) bool {
	if _, known := labUsers.password[user]; !known {
		return false
	}
	for _, p := range m.all {
		if p == priv {
			return !labUsers.lacking(user, priv)
		}
	}
	return false
}

func (m *AuthorizationManager) availability(user string, ents []types.ManagedObjectReference, privs []string) []types.EntityPrivilege {
	var out []types.EntityPrivilege
	for _, e := range ents {
		ep := types.EntityPrivilege{Entity: e}
		for _, id := range privs {
			ep.PrivAvailability = append(ep.PrivAvailability, types.PrivilegeAvailability{PrivId: id, IsGranted: m.granted(user, id)})
		}
		out = append(out, ep)
	}
	return out
}

func sessionUser(ctx *simulator.Context, sessionID string) string {
	if sessionID != "" {
		if u := labUsers.user(sessionID); u != "" {
			return u
		}
	}
	if ctx.Session != nil {
		return ctx.Session.UserName
	}
	return ""
}

func (m *AuthorizationManager) HasPrivilegeOnEntities(ctx *simulator.Context, req *types.HasPrivilegeOnEntities) soap.HasFault {
	user := sessionUser(ctx, req.SessionId)
	return &methods.HasPrivilegeOnEntitiesBody{Res: &types.HasPrivilegeOnEntitiesResponse{
		Returnval: m.availability(user, req.Entity, req.PrivId)}}
}

func (m *AuthorizationManager) HasPrivilegeOnEntity(ctx *simulator.Context, req *types.HasPrivilegeOnEntity) soap.HasFault {
	user := sessionUser(ctx, req.SessionId)
	out := make([]bool, len(req.PrivId))
	for i, id := range req.PrivId {
		out[i] = m.granted(user, id)
	}
	return &methods.HasPrivilegeOnEntityBody{Res: &types.HasPrivilegeOnEntityResponse{Returnval: out}}
}

func (m *AuthorizationManager) HasUserPrivilegeOnEntities(ctx *simulator.Context, req *types.HasUserPrivilegeOnEntities) soap.HasFault {
	return &methods.HasUserPrivilegeOnEntitiesBody{Res: &types.HasUserPrivilegeOnEntitiesResponse{
		Returnval: m.availability(req.UserName, req.Entities, req.PrivId)}}
}

func (m *AuthorizationManager) FetchUserPrivilegeOnEntities(ctx *simulator.Context, req *types.FetchUserPrivilegeOnEntities) soap.HasFault {
	var out []types.UserPrivilegeResult
	for _, e := range req.Entities {
		res := types.UserPrivilegeResult{Entity: e}
		for _, p := range m.all {
			if m.granted(req.UserName, p) {
				res.Privileges = append(res.Privileges, p)
			}
		}
		out = append(out, res)
	}
	return &methods.FetchUserPrivilegeOnEntitiesBody{Res: &types.FetchUserPrivilegeOnEntitiesResponse{Returnval: out}}
}

func installAuthorizationManager() {
	si := simulator.Map.Get(vim25.ServiceInstance).(*simulator.ServiceInstance)
	if si.Content.AuthorizationManager == nil {
		return
	}
	orig, ok := simulator.Map.Get(*si.Content.AuthorizationManager).(*simulator.AuthorizationManager)
	if !ok {
		return
	}
	admin := object.AuthorizationRoleList(orig.RoleList).ByName("Admin")
	m := &AuthorizationManager{AuthorizationManager: *orig}
	if admin != nil {
		m.all = append(m.all, admin.Privilege...)
	}
	// vCenter's tagging privileges, which the simulator's (ESXi) privilege list predates
	for _, p := range taggingPrivileges {
		if !contains(m.all, p) {
			m.all = append(m.all, p)
		}
	}
	simulator.Map.Put(m)
}

var taggingPrivileges = []string{
	"InventoryService.Tagging.AttachTag", "InventoryService.Tagging.CreateCategory",
	"InventoryService.Tagging.CreateTag", "InventoryService.Tagging.DeleteCategory",
	"InventoryService.Tagging.DeleteTag", "InventoryService.Tagging.EditCategory",
	"InventoryService.Tagging.EditTag", "InventoryService.Tagging.ModifyUsedByForCategory",
	"InventoryService.Tagging.ModifyUsedByForTag", "InventoryService.Tagging.ObjectAttachable",
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
