package device

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// loopDevice attaches a loop device to a fresh size-byte file and detaches
// it when the test ends. It skips the test when that cannot be done.
func loopDevice(t *testing.T, size int64) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("block-device tests need root to attach a loop device")
	}
	if _, err := exec.LookPath("losetup"); err != nil {
		t.Skip("block-device tests need losetup, which is not installed")
	}
	img := newFile(t, size)
	out, err := exec.Command("losetup", "--find", "--show", img).CombinedOutput()
	if err != nil {
		t.Skipf("cannot attach a loop device (no loop support here?): %v: %s", err, bytes.TrimSpace(out))
	}
	dev := strings.TrimSpace(string(out))
	t.Cleanup(func() {
		if out, err := exec.Command("losetup", "-d", dev).CombinedOutput(); err != nil {
			t.Errorf("losetup -d %s: %v: %s", dev, err, out)
		}
	})
	return dev
}

func TestBlockDevice(t *testing.T) {
	const size = 16 << 20
	dev := loopDevice(t, size)
	f := openFile(t, dev, Options{Direct: true, Exclusive: true})
	if f.kind != kindBlock {
		t.Fatalf("%s not recognised as a block device", dev)
	}
	if f.Size() != size {
		t.Fatalf("Size = %d, want %d", f.Size(), size)
	}

	buf := AlignedBuffer(1 << 20)
	copy(buf, pattern(len(buf), 4))
	mustWrite(t, f, buf, 2<<20)
	got := AlignedBuffer(len(buf))
	if _, err := f.ReadAt(got, 2<<20); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, buf) {
		t.Fatal("read back differs")
	}

	// The ioctl itself works on aligned ranges and refuses others (the
	// case Zero falls back to writing for).
	if err := blkZeroOut(f.fd, 0, BlockSize); err != nil {
		t.Errorf("BLKZEROOUT on an aligned range: %v", err)
	}
	if err := blkZeroOut(f.fd, 100, 1000); err == nil {
		t.Error("BLKZEROOUT accepted an unaligned range")
	}

	// Zero on an aligned range.
	if err := f.Zero(2<<20+BlockSize, 4*BlockSize); err != nil {
		t.Fatalf("Zero: %v", err)
	}
	if _, err := f.ReadAt(got, 2<<20); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got[:BlockSize], buf[:BlockSize]) ||
		!allZero(got[BlockSize:5*BlockSize]) ||
		!bytes.Equal(got[5*BlockSize:], buf[5*BlockSize:]) {
		t.Error("Zero on the block device zeroed the wrong range")
	}
	wantErr(t, "zero past end", f.Zero(size-512, 1024), ErrOutOfRange)
	if err := f.Sync(); err != nil {
		t.Errorf("Sync: %v", err)
	}

	_, err := Open(dev, Options{Exclusive: true})
	wantErr(t, "second exclusive open of the block device", err, ErrLocked)
}

func TestBlockDeviceUnalignedZero(t *testing.T) {
	const size = 16 << 20
	dev := loopDevice(t, size)
	f := openFile(t, dev, Options{})
	mustWrite(t, f, pattern(1<<20, 6), 0)
	// BLKZEROOUT refuses ranges not aligned to 512; the fallback writes.
	if err := f.Zero(100, 1000); err != nil {
		t.Fatalf("Zero: %v", err)
	}
	got := mustRead(t, f, 0, 1<<20)
	want := pattern(1<<20, 6)
	clear(want[100:1100])
	if !bytes.Equal(got, want) {
		t.Error("unaligned Zero on the block device zeroed the wrong range")
	}
}

func TestBlockDeviceIdentity(t *testing.T) {
	devA := loopDevice(t, 16<<20)
	devB := loopDevice(t, 16<<20)
	a := openFile(t, devA, Options{})
	id := a.Identity()
	a.Close()
	if again := openFile(t, devA, Options{ReadOnly: true}).Identity(); again != id {
		t.Error("block identity changed across reopen")
	}
	if other := openFile(t, devB, Options{}).Identity(); other == id {
		t.Error("two loop devices share an identity")
	}
}

// fakeSysfs points sysfsBlock at a temp tree for the test.
func fakeSysfs(t *testing.T) string {
	t.Helper()
	root := t.TempDir()
	old := sysfsBlock
	sysfsBlock = root
	t.Cleanup(func() { sysfsBlock = old })
	return root
}

func writeSys(t *testing.T, path, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestBlockIdentityFromSysfs(t *testing.T) {
	root := fakeSysfs(t)
	const rdev = 8<<8 | 0 // 8:0, the old sda numbering
	noID := blockIdentity(rdev, 1<<30)
	if blockIdentity(rdev, 1<<30) != noID {
		t.Fatal("identity is not deterministic")
	}
	if blockIdentity(rdev, 2<<30) == noID {
		t.Error("size is not mixed into the identity")
	}

	// A serial number replaces the device number, so renumbering (8:0 to
	// 8:16 after a reboot) keeps the identity.
	writeSys(t, filepath.Join(root, "8:0/device/serial"), "  WD-1234\n")
	withSerial := blockIdentity(rdev, 1<<30)
	if withSerial == noID {
		t.Error("serial not used")
	}
	writeSys(t, filepath.Join(root, "8:16/device/serial"), "WD-1234")
	if blockIdentity(8<<8|16, 1<<30) != withSerial {
		t.Error("same serial under another device number gave another identity")
	}
	// wwid is preferred over the serial.
	writeSys(t, filepath.Join(root, "8:0/wwid"), "naa.5000c500")
	if blockIdentity(rdev, 1<<30) == withSerial {
		t.Error("wwid not preferred")
	}
	// An empty file does not count.
	writeSys(t, filepath.Join(root, "8:32/device/serial"), "\n")
	if blockIdentity(8<<8|32, 1<<30) == withSerial {
		t.Error("empty serial used")
	}

	// A partition: sysfs's MAJ:MIN entry is a symlink into its parent
	// disk's directory.
	disk := filepath.Join(root, "devices", "sdb")
	writeSys(t, filepath.Join(disk, "device/serial"), "ST-99")
	writeSys(t, filepath.Join(disk, "sdb1/partition"), "1")
	writeSys(t, filepath.Join(disk, "sdb1/start"), "2048")
	writeSys(t, filepath.Join(disk, "sdb2/partition"), "2")
	writeSys(t, filepath.Join(disk, "sdb2/start"), "4096")
	for name, target := range map[string]string{"8:17": "sdb1", "8:18": "sdb2"} {
		if err := os.Symlink(filepath.Join(disk, target), filepath.Join(root, name)); err != nil {
			t.Fatal(err)
		}
	}
	p1, p2 := blockIdentity(8<<8|17, 1<<20), blockIdentity(8<<8|18, 1<<20)
	if p1 == p2 {
		t.Error("two partitions of one disk share an identity")
	}
	// Without the parent's serial, the partitions fall back to rdev.
	if err := os.Remove(filepath.Join(disk, "device/serial")); err != nil {
		t.Fatal(err)
	}
	if blockIdentity(8<<8|17, 1<<20) == p1 {
		t.Error("partition identity ignored its parent's serial")
	}
}
