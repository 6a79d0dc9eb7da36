// containerd's snapshotter test suite (snapshots/testsuite of containerd 1.6) against
// `cowstore snapshotter serve`, reached through containerd's own proxy client
// (snapshots/proxy) as containerd reaches a proxy plugin. Every test case gets a
// server of its own on the case's own root. Built by tests/snapshotter/test_gosuite.py
// in GOPATH mode from Debian's golang-github-containerd-containerd-dev.
//
// Environment: COWSTORE_PYTHON (interpreter), COWSTORE_DRIVER, COWSTORE_STORAGE_OPTS
// (space-separated KEY=VALUE), PYTHONPATH (cowstore's src).
package gosuite

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/snapshots"
	"github.com/containerd/containerd/snapshots/proxy"
	"github.com/containerd/containerd/snapshots/testsuite"
	"google.golang.org/grpc"
)

func storeArgs(root string) []string {
	args := []string{"-m", "cowstore.cli", "--root", root, "--driver", os.Getenv("COWSTORE_DRIVER")}
	for _, opt := range strings.Fields(os.Getenv("COWSTORE_STORAGE_OPTS")) {
		args = append(args, "--storage-opt", opt)
	}
	return args
}

// release stops the helper servers (union, block) that the driver started for this root.
func release(root string) error {
	code := "import sys; from cowstore.store import Store; " +
		"Store(sys.argv[1], sys.argv[2], dict(o.split('=', 1) for o in sys.argv[3:])).shutdown()"
	args := append([]string{"-c", code, root, os.Getenv("COWSTORE_DRIVER")},
		strings.Fields(os.Getenv("COWSTORE_STORAGE_OPTS"))...)
	out, err := exec.Command(os.Getenv("COWSTORE_PYTHON"), args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("releasing %s: %v: %s", root, err, out)
	}
	return nil
}

func newSnapshotter(ctx context.Context, root string) (snapshots.Snapshotter, func() error, error) {
	store := filepath.Join(root, "store")
	sock := filepath.Join(root, "snapshotter.sock")
	logFile, err := os.Create(filepath.Join(filepath.Dir(root), "server.log"))
	if err != nil {
		return nil, nil, err
	}
	args := append(storeArgs(store), "snapshotter", "serve", "--address", sock)
	cmd := exec.Command(os.Getenv("COWSTORE_PYTHON"), args...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		logFile.Close()
		return nil, nil, err
	}
	stop := func() error {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		waitErr := cmd.Wait()
		logFile.Close()
		if err := release(store); err != nil {
			return err
		}
		if waitErr != nil {
			log, _ := os.ReadFile(logFile.Name())
			return fmt.Errorf("server: %v: %s", waitErr, log)
		}
		return nil
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		if c, err := net.Dial("unix", sock); err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			stop()
			return nil, nil, fmt.Errorf("snapshotter did not come up on %s", sock)
		}
		time.Sleep(20 * time.Millisecond)
	}
	conn, err := grpc.Dial("unix://"+sock, grpc.WithInsecure())
	if err != nil {
		stop()
		return nil, nil, err
	}
	sn := proxy.NewSnapshotter(snapshotsapi.NewSnapshotsClient(conn), "cowstore")
	cleanup := func() error {
		conn.Close()
		return stop()
	}
	return sn, cleanup, nil
}

func TestSnapshotterSuite(t *testing.T) {
	if os.Getenv("COWSTORE_PYTHON") == "" {
		t.Skip("run by tests/snapshotter/test_gosuite.py")
	}
	testsuite.SnapshotterSuite(t, "Cowstore-"+os.Getenv("COWSTORE_DRIVER"), newSnapshotter)
}
