//go:build linux

// Not part of containerd's suite: the same operations on idoverlay and on
// containerd's overlayfs snapshotter, and their mounts, Stat and Usage
// compared once each root is replaced by ROOT (containerd's own overlay
// tests check these exact mount shapes through internals a proxy lacks).
package idoverlaytest

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"testing"

	"github.com/containerd/containerd/errdefs"
	"github.com/containerd/containerd/mount"
	"github.com/containerd/containerd/namespaces"
	"github.com/containerd/containerd/pkg/testutil"
	"github.com/containerd/containerd/snapshots"
	"github.com/containerd/containerd/snapshots/overlay"
)

func transcript(ctx context.Context, sn snapshots.Snapshotter, root string) []string {
	var out []string
	norm := func(s string) string { return strings.ReplaceAll(s, root, "ROOT") }
	// Mount options are sorted: their order means nothing to mount(2), and
	// containerd 1.7 puts index=off first, 2.x last (as idoverlay does).
	sortedOpts := func(ms []mount.Mount) []mount.Mount {
		out := make([]mount.Mount, len(ms))
		for i, m := range ms {
			m.Options = append([]string(nil), m.Options...)
			sort.Strings(m.Options)
			out[i] = m
		}
		return out
	}
	// Errors compared by errdefs class (what callers test), not text.
	rec := func(op string, v any, err error) {
		if ms, ok := v.([]mount.Mount); ok {
			v = sortedOpts(ms)
		}
		out = append(out, norm(fmt.Sprintf("%s: %+v err=%s", op, v, class(err))))
	}
	writeFile := func(key string) {
		ms, err := sn.Mounts(ctx, key)
		if err != nil || len(ms) != 1 || ms[0].Type != "bind" {
			return
		}
		os.WriteFile(filepath.Join(ms[0].Source, "file"), []byte("0123456789"), 0644)
	}
	ms, err := sn.Prepare(ctx, "a", "")
	rec("prepare a", ms, err)
	writeFile("a")
	u, err := sn.Usage(ctx, "a")
	rec("usage a (active)", u, err)
	rec("commit a->base", nil, sn.Commit(ctx, "base", "a"))
	u, err = sn.Usage(ctx, "base")
	rec("usage base", u, err)
	ms, err = sn.Prepare(ctx, "b", "base")
	rec("prepare b", ms, err)
	ms, err = sn.View(ctx, "v1", "base")
	rec("view v1 on base", ms, err)
	rec("commit b->top", nil, sn.Commit(ctx, "top", "b"))
	ms, err = sn.View(ctx, "v2", "top")
	rec("view v2 on top", ms, err)
	ms, err = sn.Prepare(ctx, "c", "top")
	rec("prepare c on top", ms, err)
	ms, err = sn.Mounts(ctx, "c")
	rec("mounts c", ms, err)
	ms, err = sn.Mounts(ctx, "top")
	rec("mounts top (committed)", ms, err)
	for _, k := range []string{"base", "top", "c", "v1", "v2"} {
		i, err := sn.Stat(ctx, k)
		rec("stat "+k, fmt.Sprintf("kind=%v name=%s parent=%s labels=%v", i.Kind, i.Name, i.Parent, i.Labels), err)
	}
	_, err = sn.Prepare(ctx, "c", "top")
	rec("prepare c again", nil, err)
	_, err = sn.Prepare(ctx, "d", "nope")
	rec("prepare d on missing", nil, err)
	_, err = sn.Prepare(ctx, "d", "c")
	rec("prepare d on active", nil, err)
	rec("commit v1", nil, sn.Commit(ctx, "x", "v1"))
	rec("remove base (has children)", nil, sn.Remove(ctx, "base"))
	rec("remove nope", nil, sn.Remove(ctx, "nope"))
	_, err = sn.Stat(ctx, "nope")
	rec("stat nope", nil, err)
	return out
}

func TestDifferential(t *testing.T) {
	testutil.RequiresRoot(t)
	ctx := namespaces.WithNamespace(context.Background(), "testsuite")
	run := func(fn func(ctx context.Context, root string) (snapshots.Snapshotter, func() error, error), sub string) []string {
		tmp := t.TempDir()
		root := filepath.Join(tmp, "root")
		os.MkdirAll(root, 0755)
		sn, cleanup, err := fn(ctx, root)
		if err != nil {
			t.Fatal(err)
		}
		defer cleanup()
		return transcript(ctx, sn, filepath.Join(root, sub))
	}
	want := run(func(ctx context.Context, root string) (snapshots.Snapshotter, func() error, error) {
		sn, err := overlay.NewSnapshotter(root)
		if err != nil {
			return nil, nil, err
		}
		return sn, sn.Close, nil
	}, "")
	got := run(startIdoverlay, "snap")
	for i := 0; i < len(want) || i < len(got); i++ {
		var w, g string
		if i < len(want) {
			w = want[i]
		}
		if i < len(got) {
			g = got[i]
		}
		if !reflect.DeepEqual(w, g) {
			t.Errorf("differs:\n  containerd: %s\n  idoverlay:  %s", w, g)
		} else {
			t.Logf("same: %s", w)
		}
	}
}

func class(err error) string {
	switch {
	case err == nil:
		return "nil"
	case errdefs.IsNotFound(err):
		return "NotFound"
	case errdefs.IsAlreadyExists(err):
		return "AlreadyExists"
	case errdefs.IsInvalidArgument(err):
		return "InvalidArgument"
	case errdefs.IsFailedPrecondition(err):
		return "FailedPrecondition"
	case errdefs.IsNotImplemented(err):
		return "NotImplemented"
	}
	return "other(" + err.Error() + ")"
}
