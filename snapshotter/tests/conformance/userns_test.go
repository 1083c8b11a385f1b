//go:build linux

// The shifted-map suite run as a container would see it: the test process
// (the "inner" one) runs in a user namespace whose root is host uid/gid
// 100000 (map 0:100000:65536, the same as the snapshots' map labels), so the
// idmapped snapshots show owner 0 to it, as its own flat directories do.
//
// The snapshotter must run as real root, outside: the outer test starts a
// launcher on a unix socket that starts (and stops) one snapshotter per
// suite test for the inner process. Because an unprivileged root cannot
// traverse the snapshotter's 0700 directories to bind-mount a snapshot, the
// launcher adds o+x to the directories between --root and each mount source
// the inner process is given (their contents and the sources themselves are
// untouched). The whole tree lives under one directory made a shared mount,
// so the snapshotter's overlays propagate into the inner mount namespace.
package idoverlaytest

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/containerd/containerd/mount"
	"github.com/containerd/containerd/pkg/testutil"
	"github.com/containerd/containerd/snapshots"
	"github.com/containerd/containerd/snapshots/testsuite"
)

const usernsMap = "0:100000:65536"

func TestIdoverlayMappedUserns(t *testing.T) {
	testutil.RequiresRoot(t)
	if os.Getenv("IDOVERLAY_SHIFTED") != "1" {
		t.Skip("exploratory, fails for a reason of the harness (see the report); IDOVERLAY_SHIFTED=1 runs it")
	}
	if os.Getenv("IDOVERLAY_INNER") == "1" {
		testsuite.SnapshotterSuite(t, suiteName(), usernsFn(os.Getenv("IDOVERLAY_LAUNCHER")))
		return
	}
	base, err := os.MkdirTemp("", "idoverlay-userns-")
	if err != nil {
		t.Fatal(err)
	}
	os.Chmod(base, 0755)
	if err := syscall.Mount(base, base, "", syscall.MS_BIND, ""); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mount("", base, "", syscall.MS_SHARED, ""); err != nil {
		t.Fatal(err)
	}
	defer func() {
		syscall.Unmount(base, syscall.MNT_DETACH)
		os.RemoveAll(base)
	}()
	tmp := filepath.Join(base, "tmp")
	os.Mkdir(tmp, 0755)
	os.Chown(tmp, 100000, 100000)
	sock := filepath.Join(base, "launcher.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	os.Chmod(sock, 0666)
	var wg sync.WaitGroup
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() { defer wg.Done(); serveLauncher(t, c) }()
		}
	}()

	args := []string{"-test.root", "-test.v", "-test.run", "^TestIdoverlayMappedUserns$", "-test.timeout", "25m"}
	cmd := exec.Command("/proc/self/exe", args...)
	cmd.Env = append(os.Environ(), "IDOVERLAY_INNER=1", "IDOVERLAY_LAUNCHER="+sock, "TMPDIR="+tmp)
	cmd.Stdout = os.Stdout
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Cloneflags:  syscall.CLONE_NEWUSER | syscall.CLONE_NEWNS,
		UidMappings: []syscall.SysProcIDMap{{ContainerID: 0, HostID: 100000, Size: 65536}},
		GidMappings: []syscall.SysProcIDMap{{ContainerID: 0, HostID: 100000, Size: 65536}},
		// Become the namespace's root (host 100000): the clone alone keeps
		// host uid 0, which has no id in it.
		Credential: &syscall.Credential{Uid: 0, Gid: 0, NoSetGroups: true},
		Pdeathsig:  syscall.SIGKILL,
	}
	if err := cmd.Run(); err != nil {
		t.Errorf("inner suite (in the user namespace): %v", err)
	}
	l.Close()
	wg.Wait()
}

// serveLauncher: "start ROOT" starts a snapshotter for ROOT (as startIdoverlay
// does); "open PATH" opens traversal to PATH; "stop" stops it.
func serveLauncher(t *testing.T, c net.Conn) {
	defer c.Close()
	r := bufio.NewReader(c)
	var root string
	var cleanup func() error
	reply := func(err error) {
		if err != nil {
			fmt.Fprintf(c, "err %s\n", strings.ReplaceAll(err.Error(), "\n", " | "))
		} else {
			fmt.Fprintf(c, "ok\n")
		}
	}
	defer func() {
		if cleanup != nil {
			cleanup()
		}
	}()
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return
		}
		cmd, arg, _ := strings.Cut(strings.TrimSpace(line), " ")
		switch cmd {
		case "start":
			root = arg
			_, cl, err := startIdoverlay(context.Background(), root)
			if err == nil {
				cleanup = cl
				os.Chmod(filepath.Join(root, "s.sock"), 0666)
				err = openPath(root, filepath.Join(root, "snap", "x"))
			}
			reply(err)
		case "open":
			reply(openPath(root, arg))
		case "stop":
			var err error
			if cleanup != nil {
				err = cleanup()
				cleanup = nil
			}
			// What the snapshotter made under the inner test's root; the
			// inner process cannot remove it.
			// Overlays it left attached go first (lazily), so that the
			// removal does not walk into them.
			unmountUnder(filepath.Join(root, "snap"))
			if err2 := os.RemoveAll(filepath.Join(root, "snap")); err == nil && err2 != nil {
				err = err2
			}
			reply(err)
			return
		}
	}
}

// openPath adds o+x to root/snap and every directory below it on the way to
// path (not path itself).
func openPath(root, path string) error {
	snap := filepath.Join(root, "snap")
	rel, err := filepath.Rel(snap, filepath.Dir(path))
	if err != nil || strings.HasPrefix(rel, "..") {
		return nil
	}
	dir := snap
	parts := []string{}
	if rel != "." {
		parts = strings.Split(rel, string(filepath.Separator))
	}
	for i := 0; ; i++ {
		st, err := os.Lstat(dir)
		if err != nil {
			return err
		}
		if st.IsDir() {
			if err := os.Chmod(dir, st.Mode().Perm()|0o011); err != nil {
				return err
			}
		}
		if i == len(parts) {
			return nil
		}
		dir = filepath.Join(dir, parts[i])
	}
}

type usernsClient struct {
	mu sync.Mutex
	c  net.Conn
	r  *bufio.Reader
}

func (u *usernsClient) call(format string, a ...any) error {
	u.mu.Lock()
	defer u.mu.Unlock()
	if _, err := fmt.Fprintf(u.c, format+"\n", a...); err != nil {
		return err
	}
	line, err := u.r.ReadString('\n')
	if err != nil {
		return err
	}
	line = strings.TrimSpace(line)
	if line != "ok" {
		return fmt.Errorf("launcher: %s", line)
	}
	return nil
}

func usernsFn(launcher string) testsuite.SnapshotterFunc {
	return func(ctx context.Context, root string) (snapshots.Snapshotter, func() error, error) {
		c, err := net.Dial("unix", launcher)
		if err != nil {
			return nil, nil, err
		}
		u := &usernsClient{c: c, r: bufio.NewReader(c)}
		if err := u.call("start %s", root); err != nil {
			c.Close()
			return nil, nil, err
		}
		sn, cl, err := dialIdoverlay(ctx, root, func() error { return nil })
		if err != nil {
			c.Close()
			return nil, nil, err
		}
		cleanup := func() error {
			err := cl()
			if err2 := u.call("stop"); err == nil {
				err = err2
			}
			c.Close()
			return err
		}
		return usernsMapped{mapped{sn, mapLabels(usernsMap)}, u}, cleanup, nil
	}
}

type usernsMapped struct {
	mapped
	u *usernsClient
}

func (m usernsMapped) open(ms []mount.Mount, err error) ([]mount.Mount, error) {
	if err != nil {
		return ms, err
	}
	for _, mnt := range ms {
		paths := []string{mnt.Source}
		for _, o := range mnt.Options {
			if k, v, ok := strings.Cut(o, "="); ok && (k == "lowerdir" || k == "upperdir" || k == "workdir") {
				paths = append(paths, strings.Split(v, ":")...)
			}
		}
		for _, p := range paths {
			if err := m.u.call("open %s", p); err != nil {
				return ms, err
			}
		}
	}
	return ms, nil
}

func (m usernsMapped) Prepare(ctx context.Context, key, parent string, opts ...snapshots.Opt) ([]mount.Mount, error) {
	return m.open(m.mapped.Prepare(ctx, key, parent, opts...))
}

func (m usernsMapped) View(ctx context.Context, key, parent string, opts ...snapshots.Opt) ([]mount.Mount, error) {
	return m.open(m.mapped.View(ctx, key, parent, opts...))
}

func (m usernsMapped) Mounts(ctx context.Context, key string) ([]mount.Mount, error) {
	return m.open(m.mapped.Mounts(ctx, key))
}

// unmountUnder detaches every mount below dir (made by the snapshotter this
// launcher started for dir), deepest first.
func unmountUnder(dir string) {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return
	}
	var points []string
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) > 4 && strings.HasPrefix(f[4], dir+"/") {
			points = append(points, f[4])
		}
	}
	for i := len(points) - 1; i >= 0; i-- {
		syscall.Unmount(points[i], syscall.MNT_DETACH)
	}
}
