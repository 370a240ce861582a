package main

// HTTPS server: the simulator's SOAP endpoint, datastore /folder access (with faults),
// guest file transfers, and the lab's admin API under /vmkeep-lab/.

import (
	"bytes"
	"crypto/sha1"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/xml"
	"fmt"
	"html"
	"io/ioutil"
	"net"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/soap"
)

func (lab *Lab) serve() (*http.Server, error) {
	cert, err := tls.LoadX509KeyPair(lab.spec.CertFile, lab.spec.KeyFile)
	if err != nil {
		return nil, err
	}
	leaf, err := x509.ParseCertificate(cert.Certificate[0])
	if err != nil {
		return nil, err
	}
	sum := sha1.Sum(leaf.Raw)
	var parts []string
	for _, b := range sum {
		parts = append(parts, fmt.Sprintf("%02X", b))
	}
	lab.thumbprint = strings.Join(parts, ":")

	ln, err := net.Listen("tcp", lab.spec.Listen)
	if err != nil {
		return nil, err
	}
	addr := ln.Addr().(*net.TCPAddr)
	lab.port = addr.Port
	host := net.JoinHostPort(addr.IP.String(), fmt.Sprint(addr.Port))
	lab.url = "https://" + host + "/sdk"

	svc := lab.model.Service
	svc.ServeMux = http.NewServeMux()
	svc.RegisterSDK(simulator.Map)
	sm := simulator.Map.SessionManager()
	sm.ServiceHostName = host
	sm.TLSCert = func() string { return base64.StdEncoding.EncodeToString(cert.Certificate[0]) }
	svc.Listen = &url.URL{Scheme: "https", Host: host, Path: "/sdk",
		User: url.UserPassword(lab.spec.User, lab.spec.Password)}

	lab.installWrappers()
	lab.installNasDatastores()      // nasds.go
	lab.installVirtualDiskManager() // vdm.go
	lab.installPrivileges(svc)

	mux := http.NewServeMux()
	sdk := lab.sdkHandler(svc.ServeSDK)
	mux.HandleFunc("/sdk", sdk)
	mux.HandleFunc("/sdk/vimService", sdk)
	mux.HandleFunc("/sdk/vimServiceVersions.xml", svc.ServiceVersions)
	mux.HandleFunc("/folder/", lab.vcenterFolderHandler(lab.folderHandler(svc.ServeDatastore)))
	mux.HandleFunc("/guestFile", lab.vcenterGuestFileHandler)
	mux.HandleFunc("/nfc/", lab.serveNFC)
	if err := lab.startHostEndpoints(svc.ServeDatastore); err != nil { // strict.go
		return nil, err
	}
	mux.HandleFunc("/about", svc.About)
	mux.HandleFunc("/vmkeep-lab/", lab.adminHandler)
	lab.serveTagging(mux)                         // tagging.go: the vAPI tagging service under /rest/
	mux.HandleFunc(nfcPrefix, lab.serveNFCExport) // nfc_export.go

	srv := &http.Server{
		Handler:   mux,
		TLSConfig: &tls.Config{Certificates: []tls.Certificate{cert}, ClientAuth: tls.RequestClientCert},
		ErrorLog:  nil,
	}
	go func() { _ = srv.ServeTLS(ln, "", "") }()
	return srv, nil
}

// ---- session expiry -------------------------------------------------------------------

type sessionTracker struct {
	mu         sync.Mutex
	born       map[string]time.Time
	expireTime time.Time
}

var sessions = &sessionTracker{born: map[string]time.Time{}}

func (s *sessionTracker) expireAll() {
	s.mu.Lock()
	s.expireTime = time.Now()
	s.mu.Unlock()
}

func (s *sessionTracker) expired(cookie string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	b, ok := s.born[cookie]
	return ok && !b.After(s.expireTime)
}

func (s *sessionTracker) note(cookie string) {
	s.mu.Lock()
	s.born[cookie] = time.Now()
	s.mu.Unlock()
}

// soapMethod returns the name of the first element inside the SOAP Body.
func soapMethod(body []byte) string {
	d := xml.NewDecoder(bytes.NewReader(body))
	inBody := false
	for {
		tok, err := d.Token()
		if err != nil {
			return ""
		}
		if se, ok := tok.(xml.StartElement); ok {
			if inBody {
				return se.Name.Local
			}
			if se.Name.Local == "Body" {
				inBody = true
			}
		}
	}
}

type captureWriter struct {
	http.ResponseWriter
}

func (w *captureWriter) WriteHeader(code int) {
	for _, c := range w.Header()["Set-Cookie"] {
		if strings.HasPrefix(c, soap.SessionCookieName+"=") {
			v := strings.SplitN(strings.TrimPrefix(c, soap.SessionCookieName+"="), ";", 2)[0]
			sessions.note(v)
		}
	}
	w.ResponseWriter.WriteHeader(code)
}

var noSessionMethods = map[string]bool{"RetrieveServiceContent": true, "Login": true, "LoginByToken": true,
	"LoginExtensionByCertificate": true, "CloneSession": true}

func (lab *Lab) sdkHandler(next http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		body, err := ioutil.ReadAll(r.Body)
		if err != nil {
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		r.Body = ioutil.NopCloser(bytes.NewReader(body))
		method := soapMethod(body)
		if c, err := r.Cookie(soap.SessionCookieName); err == nil {
			if sessions.expired(c.Value) {
				serviceContent := method == "Fetch" && bytes.Contains(body, []byte(">ServiceInstance<"))
				if !noSessionMethods[method] && !serviceContent {
					writeSoapFault(w, "The session is not authenticated.", "NotAuthenticated",
						`<object type="Folder">group-d1</object><privilegeId>System.View</privilegeId>`)
					return
				}
				// Drop the stale cookie so Login creates a fresh session.
				var keep []string
				for _, ck := range r.Cookies() {
					if ck.Name != soap.SessionCookieName {
						keep = append(keep, ck.String())
					}
				}
				r.Header.Del("Cookie")
				if len(keep) > 0 {
					r.Header.Set("Cookie", strings.Join(keep, "; "))
				}
			}
		}
		w, refused := lab.guardSOAP(w, r, method, body) // privileges.go
		if refused {
			return
		}
		if method == "AcquireGenericServiceTicket" { // strict.go
			lab.serveTicket(w, r, body)
			return
		}
		if rule := lab.faults.take("soap_fault", method); rule != nil {
			writeSoapFault(w, rule.msg("injected fault"), "SystemError", "<reason>vmkeep lab injected fault</reason>")
			return
		}
		if freeLicenceRefuses[method] && lab.faults.peek("free_licence", "") != nil {
			// a free ESXi licence: the API is read-only; every write fails at once (no task)
			writeSoapFault(w, "Current license or ESXi version prohibits execution of the requested operation.", "RestrictedVersion", "")
			return
		}
		if ds := lab.unknownDatastore(method, body); ds != "" {
			// vSphere answers InvalidDatastorePath; vcsim panicked and left a nameless VM behind
			writeSoapFault(w, fmt.Sprintf("Invalid datastore path '[%s]'.", ds), "InvalidDatastorePath",
				fmt.Sprintf("<name>%s</name><datastorePath>[%s]</datastorePath>", xmlEscape(ds), xmlEscape(ds)))
			return
		}
		if ds, host := lab.unmountedDatastore(method, body); ds != nil { // diskmove.go
			writeSoapFault(w, fmt.Sprintf("The datastore '%s' is not accessible from host %s", ds.Name, host.Name),
				"InaccessibleDatastore", fmt.Sprintf(`<datastore type="Datastore">%s</datastore><name>%s</name><detail>not mounted on host %s</detail>`,
					ds.Self.Value, xmlEscape(ds.Name), xmlEscape(host.Name)))
			return
		}
		if i := lab.unknownNetwork(method, body); i >= 0 { // networks.go
			writeSoapFault(w, fmt.Sprintf("Invalid configuration for device '%d'.", i), "InvalidDeviceSpec",
				fmt.Sprintf("<property>device.backing</property><deviceIndex>%d</deviceIndex>", i))
			return
		}
		if method == "CreateVM_Task" || method == "ImportVApp" { // vSphere escapes the new name
			body = escapeNewVMName(body)
			r.Body = ioutil.NopCloser(bytes.NewReader(body))
			r.ContentLength = int64(len(body))
		}
		if refuseDuplicateName(w, method, body) { // dupname.go: VM names are unique per folder
			return
		}
		if refuseVMsInDC2(w, method, body) { // otherdc.go
			return
		}
		if i := lab.rdmOffVMFS(method, body); i >= 0 { // rdm.go: mapping files live on VMFS only
			writeSoapFault(w, fmt.Sprintf("Incompatible device backing specified for device '%d'.", i), "InvalidDeviceBacking",
				fmt.Sprintf("<property>device.backing</property><deviceIndex>%d</deviceIndex>", i))
			return
		}
		if method == "CreateVM_Task" || method == "ReconfigVM_Task" { // rdm.go: vcsim takes flat backings only
			body = noteRDMBackings(body)
			r.Body = ioutil.NopCloser(bytes.NewReader(body))
			r.ContentLength = int64(len(body))
		}
		hw, after := lab.soapHooks(method, body, w)
		serveSOAP(next, &captureWriter{hw}, r) // strict.go: byte arrays as vSphere sends them
		if adoptMethods[method] {
			lab.adoptNewVMs()
		}
		after()
	}
}

func writeSoapFault(w http.ResponseWriter, msg, kind, inner string) {
	w.Header().Set("Content-Type", "text/xml; charset=utf-8")
	w.WriteHeader(http.StatusInternalServerError)
	fmt.Fprintf(w, `<?xml version="1.0" encoding="UTF-8"?>
<soapenv:Envelope xmlns:soapenc="http://schemas.xmlsoap.org/soap/encoding/" xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns:xsd="http://www.w3.org/2001/XMLSchema" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><soapenv:Body><soapenv:Fault><faultcode>ServerFaultCode</faultcode><faultstring>%s</faultstring><detail><%sFault xmlns="urn:vim25" xsi:type="%s">%s</%sFault></detail></soapenv:Fault></soapenv:Body></soapenv:Envelope>`,
		xmlEscape(msg), kind, kind, inner, kind)
}

func xmlEscape(s string) string {
	var b bytes.Buffer
	_ = xml.EscapeText(&b, []byte(s))
	return b.String()
}

// freeLicenceRefuses: the write methods a host with a free ESXi licence refuses with
// RestrictedVersion (fault free_licence). Reads — inventory, datastore downloads, CBT queries,
// NFC exports — still work, as on a free host.
var freeLicenceRefuses = map[string]bool{
	"CreateSnapshot_Task": true, "RemoveSnapshot_Task": true, "RevertToSnapshot_Task": true,
	"RemoveAllSnapshots_Task": true, "ConsolidateVMDisks_Task": true, "ReconfigVM_Task": true,
	"PowerOnVM_Task": true, "PowerOffVM_Task": true, "CreateVM_Task": true, "RegisterVM_Task": true,
	"ImportVApp": true, "Destroy_Task": true, "CopyVirtualDisk_Task": true,
	"MoveVirtualDisk_Task": true, "DeleteVirtualDisk_Task": true, "DeleteDatastoreFile_Task": true,
}

var vmPathDatastoreRe = regexp.MustCompile(`<vmPathName>\[([^\]]*)\]`)

// unknownDatastore: the datastore a CreateVM_Task or ImportVApp would put the VM on, when the lab
// has no such datastore ("" otherwise).
func (lab *Lab) unknownDatastore(method string, body []byte) string {
	if method != "CreateVM_Task" && method != "ImportVApp" {
		return ""
	}
	m := vmPathDatastoreRe.FindSubmatch(body)
	if m == nil {
		return ""
	}
	ds := html.UnescapeString(string(m[1]))
	if _, ok := lab.dsDirs[ds]; ok {
		return ""
	}
	return ds
}

var newVMNameRe = regexp.MustCompile(`(?s)(<(?:config|configSpec)\b[^>]*>.*?<name>)([^<]*)(</name>)`)

// escapeNewVMName escapes the VM name of a CreateVM_Task or ImportVApp request as vSphere stores
// names (rename.go): vcsim took "a/b" for a folder path and crashed.
func escapeNewVMName(body []byte) []byte {
	return newVMNameRe.ReplaceAllFunc(body, func(m []byte) []byte {
		sub := newVMNameRe.FindSubmatch(m)
		name := xmlEscape(escapeName(html.UnescapeString(string(sub[2]))))
		out := append([]byte{}, sub[1]...)
		out = append(out, name...)
		return append(out, sub[3]...)
	})
}
