package main

// Strict vCenter behaviour, the lab's default (spec.lenient turns the HTTP parts off):
//
//   - inventory: the datacenter is DC1 inside folder "Region" and a second, empty datacenter
//     DC2 exists; /folder resolves dcPath as an inventory path only ("Region/DC1"; a bare
//     name gives 404, as on vCenter);
//   - each ESX host has its own HTTPS endpoint on 127.0.0.1 (own ephemeral port, own
//     self-signed certificate; HostSystem.config.certificate holds its PEM and
//     summary.config.port its port), serving /folder and /guestFile;
//   - vCenter's /folder hands each GET/HEAD to a pseudo-random host (a hash of method, path,
//     query and Range); a disk file open for writing by a running VM's host (the current disk,
//     or the active delta under a snapshot: descriptor and data file) answers 500 "only
//     downloadable from the lock owner" unless the request lands on that host; through a host
//     endpoint the same file is readable only on its owner;
//   - SessionManager.AcquireGenericServiceTicket gives a one-time ticket that a host endpoint
//     accepts as cookie vmware_cgi_ticket for exactly that URL (path and query) and method;
//   - more than spec.host_concurrency (default 4) concurrent /folder GET/HEAD on one host
//     (through vCenter or the host's endpoint) answer 503 with Retry-After: 1;
//   - fault ds_norange (target = path substring): the Range header is ignored (200, whole file);
//     fault host_unreachable (target = host name): the host endpoint drops every connection;
//   - guest file transfers are served by the endpoint of the host running the VM, with URLs
//     https://*:PORT/guestFile?id=… ("*" as vSphere returns it); vCenter does not serve them.

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha1"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"encoding/xml"
	"fmt"
	"hash/fnv"
	"html"
	"math/big"
	"net"
	"net/http"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
)

const (
	strictDCFolder = "Region"
	strictDCName   = "DC1"
	strictDC2Name  = "DC2"
	ticketTTL      = 10 * time.Minute
)

type hostEndpoint struct {
	host       *simulator.HostSystem
	port       int
	certPEM    []byte
	thumbprint string // SHA-1, colon separated, as vSphere reports sslThumbprint
}

type serviceTicket struct {
	method  string // GET, HEAD, PUT …
	uri     string // request URI: escaped path and query
	expires time.Time
	user    string // the session's user: a ticket carries its privileges (privileges.go)
}

type strictState struct {
	mu        sync.Mutex
	endpoints []*hostEndpoint
	inflight  map[string]int // host moref -> GET/HEAD /folder requests in flight
	tickets   map[string]serviceTicket
}

var strict = &strictState{inflight: map[string]int{}, tickets: map[string]serviceTicket{}}

func (lab *Lab) lenient() bool { return lab.spec.Lenient }

func (lab *Lab) hostConcurrency() int {
	if lab.spec.HostConcurrency > 0 {
		return lab.spec.HostConcurrency
	}
	return 4
}

// ---- inventory ---------------------------------------------------------------------------

// arrangeDatacenters moves the datacenter into folder Region (renamed DC1) and adds an empty
// second datacenter, as on a real site with several datacenters.
func (lab *Lab) arrangeDatacenters(ctx context.Context) error {
	c := lab.client
	var dc *simulator.Datacenter
	for _, e := range simulator.Map.All("Datacenter") {
		dc = e.(*simulator.Datacenter)
	}
	if dc == nil {
		return fmt.Errorf("no datacenter")
	}
	simulator.Map.Update(dc, []types.PropertyChange{{Name: "name", Val: strictDCName}})
	root := object.NewRootFolder(c)
	region, err := root.CreateFolder(ctx, strictDCFolder)
	if err != nil {
		return fmt.Errorf("folder %s: %v", strictDCFolder, err)
	}
	task, err := region.MoveInto(ctx, []types.ManagedObjectReference{dc.Self})
	if err != nil {
		return err
	}
	if err := task.Wait(ctx); err != nil {
		return fmt.Errorf("move datacenter: %v", err)
	}
	dc2, err := root.CreateDatacenter(ctx, strictDC2Name)
	if err != nil {
		return fmt.Errorf("datacenter %s: %v", strictDC2Name, err)
	}
	lab.dcName = strictDCFolder + "/" + strictDCName
	return lab.populateDC2(ctx, dc2) // otherdc.go
}

// lenientDCPath lets a bare datacenter name through (the old, lenient behaviour).
func (lab *Lab) lenientDCPath(r *http.Request) {
	q := r.URL.Query()
	if dc := q.Get("dcPath"); dc == path.Base(lab.dcName) || dc == "" {
		q.Set("dcPath", lab.dcName)
		r.URL.RawQuery = q.Encode()
	}
}

// dcPathOK answers 404 unless dcPath is the inventory path of the lab's datacenter (vCenter
// resolves dcPath as an inventory path only; govmomi's finder would also accept a bare name).
func (lab *Lab) dcPathOK(w http.ResponseWriter, r *http.Request) bool {
	if strings.Trim(r.URL.Query().Get("dcPath"), "/") == lab.dcName {
		return true
	}
	http.Error(w, "datacenter not found: dcPath must be its inventory path", http.StatusNotFound)
	return false
}

// ---- host endpoints ------------------------------------------------------------------------

func hostCertificate(name string) (tls.Certificate, []byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: name, Organization: []string{"vmkeep ESX lab host"}},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().AddDate(10, 0, 0),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames:     []string{name},
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1")},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	pemBytes := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, pemBytes, nil
}

// dropListener closes new connections at once while the host is "unreachable".
type dropListener struct {
	net.Listener
	lab  *Lab
	host string
}

func (l *dropListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if l.lab.faults.peek("host_unreachable", l.host) != nil {
			c.Close()
			continue
		}
		return c, nil
	}
}

// startHostEndpoints gives every host its HTTPS endpoint (called from serve).
func (lab *Lab) startHostEndpoints(datastore http.HandlerFunc) error {
	for _, h := range lab.hosts {
		cert, pemBytes, err := hostCertificate(h.Name)
		if err != nil {
			return err
		}
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return err
		}
		sum := sha1.Sum(cert.Certificate[0])
		var parts []string
		for _, b := range sum {
			parts = append(parts, fmt.Sprintf("%02X", b))
		}
		ep := &hostEndpoint{host: h, port: ln.Addr().(*net.TCPAddr).Port, certPEM: pemBytes,
			thumbprint: strings.Join(parts, ":")}
		if h.Config != nil {
			h.Config.Certificate = pemBytes
		}
		h.Summary.Config.Port = int32(ep.port)
		strict.endpoints = append(strict.endpoints, ep)
		mux := http.NewServeMux()
		mux.HandleFunc("/folder/", lab.hostFolderHandler(ep, lab.folderHandler(datastore)))
		mux.HandleFunc("/guestFile", lab.hostGuestFileHandler(ep))
		mux.HandleFunc(nfcPrefix, lab.serveNFCExport) // NFC leases are served by the VM's host
		mux.HandleFunc("/nfc/", lab.serveNFC)
		srv := &http.Server{Handler: mux, TLSConfig: &tls.Config{Certificates: []tls.Certificate{cert}}}
		dl := &dropListener{Listener: ln, lab: lab, host: h.Name}
		go func() { _ = srv.ServeTLS(dl, "", "") }()
	}
	return nil
}

func (lab *Lab) endpointOf(ref *types.ManagedObjectReference) *hostEndpoint {
	if ref == nil {
		return nil
	}
	for _, ep := range strict.endpoints {
		if ep.host.Self == *ref {
			return ep
		}
	}
	return nil
}

// nfcURLOn is an NFC device URL as vCenter hands it out: on the ESXi host that serves the lease
// (its address and port; the client verifies that host's own certificate), or "*" (the endpoint
// the client talks to) when lenient or when the host has no endpoint.
func (lab *Lab) nfcURLOn(ref *types.ManagedObjectReference, pathAndQuery string) string {
	if !lab.lenient() {
		if ep := lab.endpointOf(ref); ep != nil {
			return fmt.Sprintf("https://127.0.0.1:%d%s", ep.port, pathAndQuery)
		}
	}
	return "https://*" + pathAndQuery
}

// routeImportURLs points an import lease's device URLs (vcsim hands out "https://*/nfc/…") at
// the ESXi host that runs the new VM, as vCenter does.
func (lab *Lab) routeImportURLs(leaseID string) {
	lease, ok := simulator.Map.Get(types.ManagedObjectReference{Type: "HttpNfcLease", Value: leaseID}).(*simulator.HttpNfcLease)
	if !ok || lease.Info == nil {
		return
	}
	vm := lab.vmByRef(lease.Info.Entity)
	if vm == nil {
		return
	}
	for i := range lease.Info.DeviceUrl {
		u := &lease.Info.DeviceUrl[i]
		if rest := strings.TrimPrefix(u.Url, "https://*"); rest != u.Url {
			u.Url = lab.nfcURLOn(vm.Runtime.Host, rest)
			u.SslThumbprint = lab.hostThumbprint(vm.Runtime.Host)
		}
	}
}

// hostThumbprint is the SHA-1 thumbprint of the host's certificate (vCenter's when none).
func (lab *Lab) hostThumbprint(ref *types.ManagedObjectReference) string {
	if ep := lab.endpointOf(ref); ep != nil && !lab.lenient() {
		return ep.thumbprint
	}
	return lab.thumbprint
}

// describeHost adds the endpoint to the ready document's host entry.
func (lab *Lab) describeHost(rh *ReadyHost, h *simulator.HostSystem) {
	if ep := lab.endpointOf(&h.Self); ep != nil {
		rh.Address = "127.0.0.1"
		rh.Port = ep.port
		rh.CertPEM = string(ep.certPEM)
	}
}

// ---- locks, routing, throttling ------------------------------------------------------------

// lockOwner is the host holding the requested datastore file open for writing, or nil.
func (lab *Lab) lockOwner(r *http.Request) *types.ManagedObjectReference {
	dir := lab.dsDirs[r.URL.Query().Get("dsName")]
	if dir == "" {
		return nil
	}
	local := filepath.Join(dir, filepath.FromSlash(strings.TrimPrefix(r.URL.Path, "/folder/")))
	if _, err := os.Stat(local); err != nil {
		return nil // no such file (e.g. no -flat.vmdk on vSAN/vVol): the datastore answers 404
	}
	for _, vm := range lab.vmList() {
		vm.st.mu.Lock()
		on := vm.Runtime.PowerState == types.VirtualMachinePowerStatePoweredOn
		var owner *types.ManagedObjectReference
		if on && vm.Runtime.Host != nil {
			for _, d := range vm.st.disks {
				top := d.top()
				if local == top.localPath() || local == filepath.Join(top.dsDir, top.extentRel()) {
					h := *vm.Runtime.Host
					owner = &h
				}
			}
		}
		vm.st.mu.Unlock()
		if owner != nil {
			return owner
		}
	}
	return nil
}

func (s *strictState) enter(host string, limit int) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.inflight[host] >= limit {
		return false
	}
	s.inflight[host]++
	return true
}

func (s *strictState) leave(host string) {
	s.mu.Lock()
	s.inflight[host]--
	s.mu.Unlock()
}

func isRead(r *http.Request) bool { return r.Method == http.MethodGet || r.Method == http.MethodHead }

func lockedAnswer(w http.ResponseWriter, owner string) {
	w.Header().Set("Content-Type", "text/plain")
	w.WriteHeader(http.StatusInternalServerError)
	fmt.Fprintf(w, "The file is locked: it is only downloadable from the lock owner (%s)\n", owner)
}

func busyAnswer(w http.ResponseWriter) {
	w.Header().Set("Retry-After", "1")
	http.Error(w, "host busy: too many concurrent datastore requests", http.StatusServiceUnavailable)
}

// readOn serves a GET/HEAD as host h would: lock check, throttle, Range-ignored fault.
func (lab *Lab) readOn(h *simulator.HostSystem, w http.ResponseWriter, r *http.Request, next http.HandlerFunc) {
	if owner := lab.lockOwner(r); owner != nil && *owner != h.Self {
		lockedAnswer(w, lab.hostName(owner))
		return
	}
	if !strict.enter(h.Self.Value, lab.hostConcurrency()) {
		busyAnswer(w)
		return
	}
	defer strict.leave(h.Self.Value)
	if lab.faults.take("ds_norange", r.URL.Path) != nil {
		r.Header.Del("Range")
	}
	next(w, r)
}

// vcenterFolderHandler wraps vCenter's /folder (auth is checked by next).
func (lab *Lab) vcenterFolderHandler(next http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if lab.lenient() {
			lab.lenientDCPath(r)
			if isRead(r) && lab.faults.take("ds_norange", r.URL.Path) != nil {
				r.Header.Del("Range")
			}
			next(w, r)
			return
		}
		if !lab.checkBasicOrCookie(r) {
			next(w, r) // 401
			return
		}
		if !lab.dcPathOK(w, r) {
			return
		}
		if !isRead(r) || len(lab.hosts) == 0 {
			next(w, r)
			return
		}
		f := fnv.New32a()
		fmt.Fprintf(f, "%s %s %s", r.Method, r.URL.RequestURI(), r.Header.Get("Range"))
		h := lab.hosts[int(f.Sum32())%len(lab.hosts)]
		lab.readOn(h, w, r, next)
	}
}

// hostFolderHandler is a host's /folder: a service ticket for exactly this request, then the
// same datastore handler (faults included) as vCenter's.
func (lab *Lab) hostFolderHandler(ep *hostEndpoint, next http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		user, ticketed := lab.takeTicket(r)
		if !ticketed && !(lab.lenient() && lab.checkBasicOrCookie(r)) {
			w.Header().Set("WWW-Authenticate", `Basic realm="VMware HTTP server"`)
			http.Error(w, "a service ticket for this request is required", http.StatusUnauthorized)
			return
		}
		if ticketed && lab.denyFolderFor(w, r, user) { // privileges.go
			return
		}
		r.SetBasicAuth(lab.spec.User, lab.spec.Password) // next checks the lab's credentials
		if lab.lenient() {
			lab.lenientDCPath(r)
		} else if !lab.dcPathOK(w, r) {
			return
		}
		if !isRead(r) {
			next(w, r)
			return
		}
		lab.readOn(ep.host, w, r, next)
	}
}

// ---- service tickets -------------------------------------------------------------------------

func ticketMethod(m string) string {
	m = strings.TrimPrefix(m, "http")
	return strings.ToUpper(m)
}

// takeTicket consumes the request's service ticket; it returns the ticket's user and whether
// the ticket is valid for exactly this method and URI.
func (lab *Lab) takeTicket(r *http.Request) (string, bool) {
	c, err := r.Cookie("vmware_cgi_ticket")
	if err != nil {
		return "", false
	}
	strict.mu.Lock()
	defer strict.mu.Unlock()
	t, ok := strict.tickets[c.Value]
	if !ok {
		return "", false
	}
	delete(strict.tickets, c.Value) // one-time credential
	return t.user, t.method == r.Method && t.uri == r.RequestURI && time.Now().Before(t.expires)
}

type ticketRequest struct {
	Body struct {
		Req struct {
			Spec struct {
				Method string `xml:"method"`
				URL    string `xml:"url"`
			} `xml:"spec"`
		} `xml:"AcquireGenericServiceTicket"`
	} `xml:"Body"`
}

// serveTicket answers AcquireGenericServiceTicket (hooked into the SOAP handler).
func (lab *Lab) serveTicket(w http.ResponseWriter, r *http.Request, body []byte) {
	c, err := r.Cookie(soap.SessionCookieName)
	known := false
	if err == nil {
		sessions.mu.Lock()
		_, known = sessions.born[c.Value]
		sessions.mu.Unlock()
		known = known && !sessions.expired(c.Value)
	}
	if !known {
		writeSoapFault(w, "The session is not authenticated.", "NotAuthenticated",
			`<object type="SessionManager">SessionManager</object><privilegeId>System.Anonymous</privilegeId>`)
		return
	}
	var req ticketRequest
	if err := xml.Unmarshal(body, &req); err != nil || req.Body.Req.Spec.URL == "" {
		writeSoapFault(w, "A specified parameter was not correct: spec.url", "InvalidArgument",
			`<invalidProperty>spec.url</invalidProperty>`)
		return
	}
	u, err := url.Parse(req.Body.Req.Spec.URL)
	if err != nil {
		writeSoapFault(w, "A specified parameter was not correct: spec.url", "InvalidArgument",
			`<invalidProperty>spec.url</invalidProperty>`)
		return
	}
	method := ticketMethod(req.Body.Req.Spec.Method)
	if method == "" {
		method = "GET"
	}
	id := uuid.New().String()
	strict.mu.Lock()
	now := time.Now()
	for k, t := range strict.tickets {
		if now.After(t.expires) {
			delete(strict.tickets, k)
		}
	}
	strict.tickets[id] = serviceTicket{method: method, uri: u.RequestURI(), expires: now.Add(ticketTTL),
		user: labUsers.user(c.Value)}
	strict.mu.Unlock()
	thumb := ""
	for _, ep := range strict.endpoints {
		if fmt.Sprint(ep.port) == u.Port() {
			thumb = ep.thumbprint
		}
	}
	w.Header().Set("Content-Type", "text/xml; charset=utf-8")
	fmt.Fprintf(w, `<?xml version="1.0" encoding="UTF-8"?>
<soapenv:Envelope xmlns:soapenc="http://schemas.xmlsoap.org/soap/encoding/" xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns:xsd="http://www.w3.org/2001/XMLSchema" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><soapenv:Body><AcquireGenericServiceTicketResponse xmlns="urn:vim25"><returnval><id>%s</id><hostName>%s</hostName><sslThumbprint>%s</sslThumbprint></returnval></AcquireGenericServiceTicketResponse></soapenv:Body></soapenv:Envelope>`,
		id, xmlEscape(u.Hostname()), thumb)
}

// ---- guest file transfers --------------------------------------------------------------------

// transferURLFor is the URL of a guest transfer: on the VM's host ("*" like vSphere) when
// strict, on the lab's own port when lenient.
func (lab *Lab) transferURLFor(vm *VM, id string) string {
	if !lab.lenient() {
		if ep := lab.endpointOf(vm.Runtime.Host); ep != nil {
			return fmt.Sprintf("https://*:%d/guestFile?id=%s", ep.port, id)
		}
	}
	return lab.transferURL(id)
}

// vcenterGuestFileHandler: vCenter does not serve guest transfers (strict).
func (lab *Lab) vcenterGuestFileHandler(w http.ResponseWriter, r *http.Request) {
	if !lab.lenient() {
		http.Error(w, "guest file transfers are served by the ESXi host running the VM", http.StatusNotFound)
		return
	}
	lab.serveGuestFile(w, r)
}

func (lab *Lab) hostGuestFileHandler(ep *hostEndpoint) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		transfersMu.Lock()
		t := transfers[r.URL.Query().Get("id")]
		transfersMu.Unlock()
		if t != nil && (t.vm.Runtime.Host == nil || *t.vm.Runtime.Host != ep.host.Self) {
			http.Error(w, "transfer belongs to another host", http.StatusNotFound)
			return
		}
		lab.serveGuestFile(w, r)
	}
}

// ---- certificate encoding ------------------------------------------------------------------

// Go's encoding/xml writes a []byte (HostConfigInfo.certificate) as one text element; vSphere
// sends xsd:byte arrays as one element per byte, which is what SOAP clients (pyVmomi) parse.
var byteArrayRe = regexp.MustCompile(`<(certificate|byte)>([^<]*-----BEGIN [^<]*)</(?:certificate|byte)>`)

func expandByteArrays(body []byte) []byte {
	if !bytes.Contains(body, []byte("-----BEGIN ")) {
		return body
	}
	return byteArrayRe.ReplaceAllFunc(body, func(m []byte) []byte {
		sub := byteArrayRe.FindSubmatch(m)
		tag, text := string(sub[1]), html.UnescapeString(string(sub[2]))
		var out bytes.Buffer
		for _, b := range []byte(text) {
			fmt.Fprintf(&out, "<%s>%d</%s>", tag, int8(b), tag)
		}
		return out.Bytes()
	})
}

type soapBuffer struct {
	http.ResponseWriter
	buf  bytes.Buffer
	code int
}

func (b *soapBuffer) WriteHeader(code int)        { b.code = code }
func (b *soapBuffer) Write(p []byte) (int, error) { return b.buf.Write(p) }

// serveSOAP runs the SOAP handler and fixes byte arrays in its answer (hooked in server.go).
func serveSOAP(next http.HandlerFunc, w http.ResponseWriter, r *http.Request) {
	b := &soapBuffer{ResponseWriter: w, code: http.StatusOK}
	next(b, r)
	out := expandByteArrays(b.buf.Bytes())
	w.Header().Del("Content-Length")
	w.WriteHeader(b.code)
	_, _ = w.Write(out)
}
