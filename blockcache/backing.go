package blockcache

import (
	"fmt"

	"github.com/wbcache/wbcache/device"
	"github.com/wbcache/wbcache/layout"
)

// formattedFor names the backing device sb's cache was formatted for, in
// words (the superblock's description), for messages.
func formattedFor(sb *layout.Superblock) string {
	if sb.BackingDescription == "" {
		return "a device it did not record (the cache was formatted by an earlier wbcache)"
	}
	return sb.BackingDescription
}

// given names the backing device hdd in words.
func given(hdd device.Device) string {
	if d := device.Description(hdd); d != "" {
		return d
	}
	return "the given device"
}

// matchBacking checks that hdd is the backing device sb's cache was
// formatted for: its size and identity. It returns an error wrapping
// ErrWrongBacking naming both devices when it is not, and a note (with a
// nil error) when hdd matches only by the rule of the earlier wbcache that
// formatted the cache, which knew a loop device by its number alone.
func matchBacking(sb *layout.Superblock, hdd device.Device) (note string, err error) {
	if uint64(hdd.Size()) != sb.BackingSize {
		return "", fmt.Errorf("%w: the backing device %s has %d bytes, but the cache was formatted for %s, of %d bytes",
			ErrWrongBacking, given(hdd), hdd.Size(), formattedFor(sb), sb.BackingSize)
	}
	id := hdd.Identity()
	if id == sb.BackingIdentity {
		return "", nil
	}
	if legacy, ok := device.LegacyIdentity(hdd); ok && legacy == sb.BackingIdentity && sb.BackingDescription == "" {
		return fmt.Sprintf("the cache was formatted by an earlier wbcache, which knew a loop device by its device number only: "+
			"it cannot tell which file is behind %s now. Make sure it is the file the cache was formatted for (losetup --list shows it)", given(hdd)), nil
	}
	return "", fmt.Errorf("%w: the backing device %s (identity %x) is not the one the cache was formatted for, %s (identity %x) "+
		"(a copy of it, or another file behind the same loop device, is a different device)",
		ErrWrongBacking, given(hdd), id[:4], formattedFor(sb), sb.BackingIdentity[:4])
}
