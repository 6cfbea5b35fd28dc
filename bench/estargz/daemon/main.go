// starlight-bench-stargz: the eStargz remote snapshotter served to containerd
// as a proxy snapshotter over a unix socket, built from Debian's
// golang-github-containerd-stargz-snapshotter-dev sources (Debian packages
// ctr-remote but not the daemon). Only what the benchmark needs: a TOML
// configuration (service.Config: resolver mirrors, prefetch settings), a root
// directory, credentials from ~/.docker/config.json; no CRI keychain, no
// metrics, no systemd notification.
package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/contrib/snapshotservice"
	"github.com/containerd/containerd/log"
	"github.com/containerd/stargz-snapshotter/service"
	"github.com/containerd/stargz-snapshotter/service/keychain/dockerconfig"
	"github.com/containerd/stargz-snapshotter/service/resolver"
	"github.com/containerd/stargz-snapshotter/version"
	"github.com/pelletier/go-toml"
	"github.com/sirupsen/logrus"
	"google.golang.org/grpc"
)

func main() {
	socket := flag.String("address", "/run/starlight-bench-stargz/stargz.sock", "unix socket containerd dials")
	configFile := flag.String("config", "", "TOML configuration of the snapshotter (optional)")
	root := flag.String("root", "/var/lib/starlight-bench-stargz", "state directory")
	level := flag.String("log-level", "info", "log level")
	showVersion := flag.Bool("version", false, "print the version and exit")
	flag.Parse()
	if *showVersion {
		fmt.Printf("containerd-stargz-grpc (starlight-bench build) %s\n", version.Version)
		return
	}
	if err := run(*socket, *configFile, *root, *level); err != nil {
		fmt.Fprintf(os.Stderr, "containerd-stargz-grpc: %v\n", err)
		os.Exit(1)
	}
}

func run(socket, configFile, root, level string) error {
	lvl, err := logrus.ParseLevel(level)
	if err != nil {
		return err
	}
	logrus.SetLevel(lvl)
	ctx := log.WithLogger(context.Background(), log.L)

	var config service.Config
	if configFile != "" {
		tree, err := toml.LoadFile(configFile)
		if err != nil {
			return fmt.Errorf("reading %s: %w", configFile, err)
		}
		if err := tree.Unmarshal(&config); err != nil {
			return fmt.Errorf("parsing %s: %w", configFile, err)
		}
	}
	if err := service.Supported(root); err != nil {
		return fmt.Errorf("not supported here: %w", err)
	}
	creds := []resolver.Credential{dockerconfig.NewDockerconfigKeychain(ctx)}
	sn, err := service.NewStargzSnapshotterService(ctx, root, &config, service.WithCredsFuncs(creds...))
	if err != nil {
		return fmt.Errorf("starting the snapshotter: %w", err)
	}
	defer sn.Close()

	if err := os.MkdirAll(filepath.Dir(socket), 0o700); err != nil {
		return err
	}
	if err := os.RemoveAll(socket); err != nil {
		return err
	}
	listener, err := net.Listen("unix", socket)
	if err != nil {
		return err
	}
	server := grpc.NewServer()
	snapshotsapi.RegisterSnapshotsServer(server, snapshotservice.FromSnapshotter(sn))
	failed := make(chan error, 1)
	go func() { failed <- server.Serve(listener) }()
	log.G(ctx).WithField("address", socket).Info("serving")

	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGINT, syscall.SIGTERM)
	select {
	case <-stop:
		server.Stop()
		return nil
	case err := <-failed:
		return err
	}
}
