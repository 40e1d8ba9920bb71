package fuse

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// childEnv names the mount point a re-executed test binary serves until it
// is killed (see TestCleanupStaleDeadMount).
const childEnv = "WBC_FUSE_CHILD"

const childReady = "wbcache-child-mounted"

func TestMain(m *testing.M) {
	if mp := os.Getenv(childEnv); mp != "" {
		runChild(mp)
		return
	}
	os.Exit(m.Run())
}

// runChild mounts a small memBackend at mp, reports readiness on stdout and
// serves until killed.
func runChild(mp string) {
	b := newMemBackend(1 << 20)
	copy(b.data, "child data")
	s, err := Mount(mp, b, Options{Logger: testLogger(), SelfAccess: true})
	if err != nil {
		fmt.Fprintln(os.Stderr, "child: mount:", err)
		os.Exit(2)
	}
	fmt.Println(childReady)
	s.Wait()
	os.Exit(0)
}

func TestCleanupStaleNoop(t *testing.T) {
	dir := t.TempDir()
	if err := CleanupStale(dir); err != nil {
		t.Fatalf("CleanupStale on a plain directory: %v", err)
	}
	if st, err := os.Stat(dir); err != nil || !st.IsDir() {
		t.Fatalf("directory gone after CleanupStale: %v", err)
	}
	if err := CleanupStale(filepath.Join(dir, "missing")); err != nil {
		t.Fatalf("CleanupStale on a missing path: %v", err)
	}
}

func TestCleanupStaleLiveMount(t *testing.T) { eachTransport(t, tCleanupStaleLiveMount) }

func tCleanupStaleLiveMount(t *testing.T) {
	s, _, disk := mountMem(t, 1<<20, Options{}, nil)
	if err := CleanupStale(s.Mountpoint()); err != nil {
		t.Fatalf("CleanupStale on a live mount: %v", err)
	}
	if !isFUSEMount(t, s.Mountpoint()) {
		t.Fatal("CleanupStale removed a live mount")
	}
	if _, err := os.Stat(disk); err != nil {
		t.Fatalf("live mount broken: %v", err)
	}
	// The connection id derived from mountinfo is the kernel dev_t of the
	// mount (what /sys/fs/fuse/connections/ is named by).
	m, found, err := findMount(s.Mountpoint())
	var st unix.Stat_t
	if err := unix.Stat(disk, &st); err != nil {
		t.Fatal(err)
	}
	if want := uint64(unix.Major(st.Dev))<<20 | uint64(unix.Minor(st.Dev)); err != nil || !found || m.dev != want {
		t.Fatalf("findMount = %+v, %v, %v; want dev %d", m, found, err, want)
	}
}

func TestCleanupStaleDeadMount(t *testing.T) {
	requireFUSE(t)
	mp := t.TempDir()
	// Runs before TempDir's removal: never leave a dead mount behind.
	t.Cleanup(func() {
		if err := CleanupStale(mp); err != nil {
			t.Errorf("final cleanup: %v", err)
		}
	})

	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"="+mp)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	killed := false
	t.Cleanup(func() {
		if !killed {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		}
	})
	ready := make(chan error, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if strings.TrimSpace(sc.Text()) == childReady {
				ready <- nil
				return
			}
		}
		ready <- fmt.Errorf("child exited before mounting: %v", sc.Err())
	}()
	select {
	case err := <-ready:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("child did not mount within 30s")
	}
	data := make([]byte, 10)
	f, err := os.Open(filepath.Join(mp, diskName))
	if err != nil {
		t.Fatalf("open child's disk: %v", err)
	}
	_, err = f.ReadAt(data, 0)
	f.Close()
	if err != nil || string(data) != "child data" {
		t.Fatalf("read child's disk: %q, %v", data, err)
	}

	// kill -9 the daemon: the mount stays, answering ENOTCONN (ECONNABORTED
	// when the daemon served through io_uring: the ring's teardown aborts
	// the connection).
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
	killed = true
	// statfs always reaches the (dead) daemon; stat may be answered from
	// the root's cached attributes for up to rootAttrTimeout.
	var sfs unix.Statfs_t
	if err := unix.Statfs(mp, &sfs); !deadConnErr(err) {
		t.Fatalf("statfs after kill -9: %v, want ENOTCONN, ECONNABORTED or ECANCELED", err)
	}
	var st unix.Stat_t
	deadline := time.Now().Add(rootAttrTimeout + 2*time.Second)
	for {
		err := unix.Stat(mp, &st)
		if deadConnErr(err) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("stat after kill -9: %v, want ENOTCONN within %v", err, rootAttrTimeout)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if _, err := Mount(mp, newMemBackend(4096), Options{Logger: testLogger()}); !errors.Is(err, ErrDeadMount) {
		t.Fatalf("Mount over a dead mount: %v; want ErrDeadMount", err)
	} else {
		t.Logf("Mount over a dead mount: %v", err)
	}
	if err := unix.Statfs(mp, &sfs); !deadConnErr(err) {
		t.Fatalf("the failed Mount changed the dead mount: statfs %v", err)
	}

	if err := CleanupStale(mp); err != nil {
		t.Fatalf("CleanupStale: %v", err)
	}
	if err := unix.Stat(mp, &st); err != nil {
		t.Fatalf("stat after CleanupStale: %v", err)
	}
	if isFUSEMount(t, mp) {
		t.Fatal("still a FUSE mount after CleanupStale")
	}
	if _, found, _ := findMount(mp); found {
		t.Fatal("mountinfo still lists the dead mount")
	}

	// A new mount works.
	b := newMemBackend(1 << 20)
	s, err := Mount(mp, b, Options{Logger: testLogger(), SelfAccess: true})
	if err != nil {
		t.Fatalf("Mount after CleanupStale: %v", err)
	}
	t.Cleanup(func() { unmountAndWait(t, s) })
	if err := os.WriteFile(filepath.Join(mp, "disk"), nil, 0); !errors.Is(err, unix.EINVAL) {
		t.Fatalf("new mount: O_TRUNC open: %v, want EINVAL", err)
	}
	g, err := os.OpenFile(filepath.Join(mp, diskName), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	if _, err := g.WriteAt([]byte("new"), 0); err != nil || string(b.snapshot()[:3]) != "new" {
		t.Fatalf("write to new mount: %v", err)
	}
}

func deadConnErr(err error) bool {
	return errors.Is(err, unix.ENOTCONN) || errors.Is(err, unix.ECONNABORTED) || errors.Is(err, unix.ECANCELED)
}
