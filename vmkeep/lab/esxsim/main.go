// Command esxsim is the vmkeep ESX lab: VMware's vcsim simulator (govmomi, as packaged by
// Debian) extended with real disk content, ESX-like snapshots, changed-block tracking, guest
// operations without Docker, vMotion that moves files, and switchable faults.
//
// It reads a JSON spec (written by the Python front, vmkeep.lab), builds the inventory, serves
// the vSphere API over HTTPS on loopback and writes a JSON "ready" document describing the
// inventory. It runs until SIGTERM/SIGINT.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io/ioutil"
	"log"
	"os"
	"os/signal"
	"syscall"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25"
)

func main() {
	specPath := flag.String("spec", "", "path of the lab spec (JSON)")
	readyPath := flag.String("ready", "", "where to write the ready document (JSON)")
	flag.Parse()
	if *specPath == "" || *readyPath == "" {
		log.Fatal("usage: esxsim -spec SPEC.json -ready READY.json")
	}
	raw, err := ioutil.ReadFile(*specPath)
	if err != nil {
		log.Fatal(err)
	}
	var spec Spec
	if err := json.Unmarshal(raw, &spec); err != nil {
		log.Fatalf("spec: %v", err)
	}

	model := simulator.VPX()
	model.Datacenter = 1
	model.Cluster = 1
	model.ClusterHost = 2
	model.Host = 1
	model.Datastore = 0
	model.Machine = 0
	model.Portgroup = 1 // a distributed switch and port group (networks.go)
	model.Autostart = false
	if err := model.Create(); err != nil {
		log.Fatalf("model: %v", err)
	}
	ctx := context.Background()
	client, err := vim25.NewClient(ctx, model.Service)
	if err != nil {
		log.Fatalf("client: %v", err)
	}
	lab := newLab(&spec, model, client)
	if err := lab.build(ctx); err != nil {
		log.Fatalf("inventory: %v", err)
	}
	srv, err := lab.serve()
	if err != nil {
		log.Fatalf("serve: %v", err)
	}
	ready, _ := json.MarshalIndent(lab.readyDoc(), "", "  ")
	tmp := *readyPath + ".tmp"
	if err := ioutil.WriteFile(tmp, ready, 0o600); err != nil {
		log.Fatal(err)
	}
	if err := os.Rename(tmp, *readyPath); err != nil {
		log.Fatal(err)
	}
	fmt.Fprintf(os.Stderr, "esxsim: serving %s\n", lab.url)

	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	<-sig
	_ = srv.Close()
	lab.closeDisks()
}
