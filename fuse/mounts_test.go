package fuse

import "testing"

func TestMountSource(t *testing.T) {
	for line, want := range map[string]string{
		`36 35 0:42 / /mnt/x rw,nosuid shared:7 - fuse.wbcache /ssd/cache.img rw,user_id=0`: "/ssd/cache.img",
		`36 35 0:42 / /mnt/a\040b rw - fuse.wbcache /ssd/my\040cache.img rw`:                "/ssd/my cache.img",
		`36 35 0:42 / /mnt/x rw - fuse.wbcache`:                                             "",
		`garbage`:                                                                           "",
	} {
		if got := mountSource(line); got != want {
			t.Errorf("mountSource(%q) = %q, want %q", line, got, want)
		}
	}
}
