package device

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// A loop device is known by the file behind it: re-attaching its number
// to another file changes its identity, the same file under another
// number keeps it. The old rule knew only the number.
func TestLoopIdentityFromSysfs(t *testing.T) {
	root := fakeSysfs(t)
	dir := t.TempDir()
	hdd, other := filepath.Join(dir, "hdd.img"), filepath.Join(dir, "other.img")
	for _, p := range []string{hdd, other} {
		writeSys(t, p, "x")
	}
	const loop0, loop1 = 7<<8 | 0, 7<<8 | 1
	attach := func(rdev string, file, offset string) {
		writeSys(t, filepath.Join(root, rdev, "loop/backing_file"), file+"\n")
		writeSys(t, filepath.Join(root, rdev, "loop/offset"), offset+"\n")
		writeSys(t, filepath.Join(root, rdev, "loop/sizelimit"), "0\n")
	}
	attach("7:0", hdd, "0")
	onHDD := blockIdentity(loop0, 1<<20)
	legacy := legacyBlockIdentity(loop0, 1<<20)
	if onHDD == legacy {
		t.Fatal("the loop device's backing file is not used")
	}

	attach("7:0", other, "0")
	if blockIdentity(loop0, 1<<20) == onHDD {
		t.Error("loop0 re-attached to another file kept its identity")
	}
	if legacyBlockIdentity(loop0, 1<<20) != legacy {
		t.Error("the legacy rule changed with the backing file; it must not look at it")
	}
	attach("7:1", hdd, "0")
	if blockIdentity(loop1, 1<<20) != onHDD {
		t.Error("the same file attached as loop1 got another identity")
	}
	attach("7:1", hdd, "4096")
	if blockIdentity(loop1, 1<<20) == onHDD {
		t.Error("the offset into the file is not part of the identity")
	}
	// A backing file that is gone is still told apart by its path.
	attach("7:1", filepath.Join(dir, "gone.img")+" (deleted)", "0")
	if id := blockIdentity(loop1, 1<<20); id == onHDD || id == legacyBlockIdentity(loop1, 1<<20) {
		t.Error("a deleted backing file fell back to the device number")
	}

	if got := describeBlock(filepath.Join(root, "7:0"), loop0); got != "loop device on "+other {
		t.Errorf("describeBlock = %q", got)
	}
	attach("7:1", hdd, "4096")
	if got := describeBlock(filepath.Join(root, "7:1"), loop1); got != "loop device on "+hdd+", offset 4096" {
		t.Errorf("describeBlock = %q", got)
	}
	writeSys(t, filepath.Join(root, "253:0/dm/name"), "vg-data\n")
	if got := describeBlock(filepath.Join(root, "253:0"), 253<<8); got != "device-mapper name vg-data" {
		t.Errorf("describeBlock of a dm device = %q", got)
	}
	if got := describeBlock(filepath.Join(root, "8:48"), 8<<8|48); got != "block device 8:48, no serial number" {
		t.Errorf("describeBlock without an identifier = %q", got)
	}
}

// On a real loop device: the scenario of a cache formatted for /dev/loopN
// on one image, the device then detached and re-attached to another.
func TestLoopIdentitySwappedFile(t *testing.T) {
	dev := loopDevice(t, 16<<20)
	f := openFile(t, dev, Options{ReadOnly: true})
	before := f.Identity()
	legacyBefore, ok := LegacyIdentity(f)
	if !ok {
		t.Fatal("LegacyIdentity: no legacy identity for a loop device")
	}
	desc := Describe(dev)
	if !strings.Contains(desc, "loop device on ") || !strings.HasPrefix(desc, dev+" (") {
		t.Errorf("Describe(%s) = %q, want the backing file named", dev, desc)
	}
	f.Close()

	other := newFile(t, 16<<20)
	if out, err := exec.Command("losetup", "-d", dev).CombinedOutput(); err != nil {
		t.Fatalf("losetup -d: %v: %s", err, out)
	}
	if out, err := exec.Command("losetup", dev, other).CombinedOutput(); err != nil {
		t.Fatalf("re-attaching %s to %s: %v: %s", dev, other, err, bytes.TrimSpace(out))
	}
	g := openFile(t, dev, Options{ReadOnly: true})
	if g.Identity() == before {
		t.Errorf("%s re-attached to another file kept its identity", dev)
	}
	if legacy, _ := LegacyIdentity(g); legacy != legacyBefore {
		t.Error("the legacy identity (device number) changed")
	}
	if got := Describe(dev); !strings.Contains(got, other) {
		t.Errorf("Describe(%s) = %q, want %s named", dev, got, other)
	}
}

func TestDescribeRegularFile(t *testing.T) {
	p := newFile(t, 4096)
	wd, _ := os.Getwd()
	rel, err := filepath.Rel(wd, p)
	if err != nil {
		t.Fatal(err)
	}
	if got := Describe(rel); got != p {
		t.Errorf("Describe(%s) = %q, want the absolute path %s", rel, got, p)
	}
	f := openFile(t, p, Options{ReadOnly: true})
	if got := Description(f); got != p {
		t.Errorf("Description = %q", got)
	}
	if _, ok := LegacyIdentity(f); ok {
		t.Error("a regular file has a legacy identity that differs")
	}
	if got := Description(NewMem(4096, [16]byte{})); got != "" {
		t.Errorf("Description of a Mem = %q, want empty", got)
	}
}
