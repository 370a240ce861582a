package main

// Datastore file access (/folder/<path>?dcPath=&dsName=), served by the simulator with HTTP
// Range support, plus injectable faults: slow reads, short reads and dropped connections.

import (
	"net/http"
	"time"
)

type faultyWriter struct {
	http.ResponseWriter
	written int64
	slow    time.Duration // per MiB
	limit   int64         // stop after this many body bytes (-1: none)
	drop    bool          // drop the connection at the limit
	hijack  func()
}

func (w *faultyWriter) Write(p []byte) (int, error) {
	if w.limit >= 0 && w.written+int64(len(p)) > w.limit {
		n := w.limit - w.written
		if n > 0 {
			w.ResponseWriter.Write(p[:n])
			w.written += n
		}
		if f, ok := w.ResponseWriter.(http.Flusher); ok {
			f.Flush()
		}
		if w.drop {
			panic(http.ErrAbortHandler)
		}
		return int(n), http.ErrHandlerTimeout
	}
	if w.slow > 0 {
		time.Sleep(time.Duration(float64(w.slow) * float64(len(p)) / float64(1<<20)))
	}
	n, err := w.ResponseWriter.Write(p)
	w.written += int64(n)
	return n, err
}

func (lab *Lab) folderHandler(next http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if !lab.checkBasicOrCookie(r) {
			w.Header().Set("WWW-Authenticate", `Basic realm="VMware HTTP server"`)
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		if lab.denyFolder(w, r) { // privileges.go: Datastore.Browse
			return
		}
		if r.Method == http.MethodGet || r.Method == http.MethodHead {
			fw := &faultyWriter{ResponseWriter: w, limit: -1}
			p := r.URL.Path
			if rule := lab.faults.take("ds_slow", p); rule != nil {
				fw.slow = time.Duration(rule.Delay * float64(time.Second))
			}
			if rule := lab.faults.take("ds_short", p); rule != nil {
				fw.limit = rule.Bytes
			}
			if rule := lab.faults.take("ds_drop", p); rule != nil {
				fw.limit = rule.Bytes
				fw.drop = true
			}
			if r.Method == http.MethodGet {
				next(lab.encipherFolder(fw, r), r) // crypto.go
				return
			}
			next(fw, r)
			return
		}
		next(w, r)
	}
}
