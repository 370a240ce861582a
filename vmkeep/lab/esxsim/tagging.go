package main

// vSphere tags: govmomi's vAPI simulator (the REST tagging service under
// /rest/com/vmware/cis/tagging/…, sessions from POST /rest/com/vmware/cis/session with HTTP
// basic auth) mounted on the lab's server, seeded from spec.Tags (categories, tags and the lab
// VMs they are attached to).
//
// The lab checks the basic-auth credentials of a session login against its users (stock vcsim
// accepts any non-empty pair), drops a VM's associations when it is destroyed or unregistered,
// and checks a tag attach against the session user's
// InventoryService.Tagging.AttachTag (403 "unauthorized" without it, as vCenter). Only the /rest
// paths exist (Debian's govmomi 0.24 predates /api).

import (
	"bytes"
	"encoding/json"
	"fmt"
	"log"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"

	"github.com/vmware/govmomi/vapi/rest"
	vapi "github.com/vmware/govmomi/vapi/simulator"
)

// TagSpec is one tag of the lab: its category, name and the VMs (by name) it is attached to.
type TagSpec struct {
	Category string   `json:"category"`
	Name     string   `json:"name"`
	VMs      []string `json:"vms"`
}

const vapiSessionHeader = "vmware-api-session-id"

func (lab *Lab) serveTagging(mux *http.ServeMux) {
	u := &url.URL{Scheme: "https", Host: strings.TrimSuffix(strings.TrimPrefix(lab.url, "https://"), "/sdk"),
		Path: "/sdk", User: url.UserPassword(lab.spec.User, lab.spec.Password)}
	path, handler := vapi.New(u, nil)
	lab.tagHandler = handler
	if err := lab.seedTags(handler); err != nil {
		log.Printf("tags: %v", err)
	}
	mux.Handle(path, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPost && strings.HasSuffix(r.URL.Path, "/com/vmware/cis/session") && r.URL.Query().Get("~action") == "" {
			user, pass, ok := r.BasicAuth()
			labUsers.mu.Lock()
			want, known := labUsers.password[user]
			labUsers.mu.Unlock()
			if !ok || !known || want != pass || pass == "" {
				w.Header().Set("Content-Type", "application/json")
				w.WriteHeader(http.StatusUnauthorized)
				fmt.Fprint(w, `{"type":"com.vmware.vapi.std.errors.unauthenticated","value":{"messages":[]}}`)
				return
			}
			rec := httptest.NewRecorder() // remember whose session it is
			handler.ServeHTTP(rec, r)
			var answer struct {
				Value string `json:"value"`
			}
			if json.Unmarshal(rec.Body.Bytes(), &answer) == nil && answer.Value != "" {
				vapiSessions.Store(answer.Value, user)
			}
			for k, v := range rec.Header() {
				w.Header()[k] = v
			}
			w.WriteHeader(rec.Code)
			_, _ = w.Write(rec.Body.Bytes())
			return
		}
		if attachAction(r) {
			user, _ := vapiSessions.Load(r.Header.Get(vapiSessionHeader))
			if name, ok := user.(string); ok && labUsers.lacking(name, "InventoryService.Tagging.AttachTag") {
				w.Header().Set("Content-Type", "application/json")
				w.WriteHeader(http.StatusForbidden)
				fmt.Fprint(w, `{"type":"com.vmware.vapi.std.errors.unauthorized","value":{"messages":[`+
					`{"id":"vapi.security.authorization.invalid","default_message":"Unable to authorize user: `+
					`missing privilege InventoryService.Tagging.AttachTag","args":[]}]}}`)
				return
			}
		}
		handler.ServeHTTP(w, r)
	}))
}

// vapiSessions: vAPI session id -> lab user (tag attaches check the user's privilege, as vCenter).
var vapiSessions sync.Map

// attachAction: a request attaching tags to objects (InventoryService.Tagging.AttachTag).
func attachAction(r *http.Request) bool {
	if r.Method != http.MethodPost || !strings.Contains(r.URL.Path, "/tagging/tag-association") {
		return false
	}
	switch r.URL.Query().Get("~action") {
	case "attach", "attach-multiple-tags-to-object", "attach-tag-to-multiple-objects":
		return true
	}
	return false
}

// vapiCall serves one request in process; out (when not nil) receives the answer's "value".
func vapiCall(h http.Handler, session, method, p string, in, out interface{}) error {
	var body bytes.Buffer
	if in != nil {
		_ = json.NewEncoder(&body).Encode(in)
	}
	req := httptest.NewRequest(method, rest.Path+p, &body)
	req.Header.Set("Content-Type", "application/json")
	if session == "" {
		req.SetBasicAuth("lab", "lab")
	} else {
		req.Header.Set(vapiSessionHeader, session)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	if rec.Code != http.StatusOK {
		return fmt.Errorf("%s %s: %d %s", method, p, rec.Code, rec.Body.String())
	}
	if out == nil {
		return nil
	}
	return json.Unmarshal(rec.Body.Bytes(), &struct {
		Value interface{} `json:"value"`
	}{out})
}

func (lab *Lab) seedTags(h http.Handler) error {
	if len(lab.spec.Tags) == 0 {
		return nil
	}
	var session string
	if err := vapiCall(h, "", http.MethodPost, "/com/vmware/cis/session", nil, &session); err != nil {
		return err
	}
	categories := map[string]string{}
	for _, t := range lab.spec.Tags {
		cat, ok := categories[t.Category]
		if !ok {
			spec := map[string]interface{}{"create_spec": map[string]interface{}{
				"name": t.Category, "description": "vmkeep lab", "cardinality": "MULTIPLE",
				"associable_types": []string{"VirtualMachine"}}}
			if err := vapiCall(h, session, http.MethodPost, "/com/vmware/cis/tagging/category", spec, &cat); err != nil {
				return err
			}
			categories[t.Category] = cat
		}
		var tag string
		spec := map[string]interface{}{"create_spec": map[string]interface{}{
			"name": t.Name, "description": "vmkeep lab", "category_id": cat}}
		if err := vapiCall(h, session, http.MethodPost, "/com/vmware/cis/tagging/tag", spec, &tag); err != nil {
			return err
		}
		for _, name := range t.VMs {
			vm := lab.vmNamed(name)
			if vm == nil {
				return fmt.Errorf("tag %s:%s: no VM %s", t.Category, t.Name, name)
			}
			obj := map[string]interface{}{"object_id": map[string]string{"type": "VirtualMachine", "id": vm.Self.Value}}
			if err := vapiCall(h, session, http.MethodPost,
				"/com/vmware/cis/tagging/tag-association/id:"+tag+"?~action=attach", obj, nil); err != nil {
				return err
			}
		}
	}
	return nil
}

// detachTags removes every tag association of the VM moid (a destroyed or unregistered VM: vCenter
// drops the associations of an object that leaves the inventory; the vAPI simulator keeps them).
func (lab *Lab) detachTags(moid string) {
	h := lab.tagHandler
	if h == nil {
		return
	}
	var session string
	if err := vapiCall(h, "", http.MethodPost, "/com/vmware/cis/session", nil, &session); err != nil {
		return
	}
	obj := map[string]interface{}{"object_id": map[string]string{"type": "VirtualMachine", "id": moid}}
	var ids []string
	if err := vapiCall(h, session, http.MethodPost,
		"/com/vmware/cis/tagging/tag-association?~action=list-attached-tags", obj, &ids); err != nil {
		return
	}
	for _, id := range ids {
		_ = vapiCall(h, session, http.MethodPost,
			"/com/vmware/cis/tagging/tag-association/id:"+id+"?~action=detach", obj, nil)
	}
}
