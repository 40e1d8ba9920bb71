package crashtest

import (
	"fmt"
	"os/exec"
	"strings"
)

// AttachLoop puts a loop device (direct I/O) on file and registers it for
// Cleanup.
func (p *Procs) AttachLoop(file string) (string, error) {
	out, err := exec.Command("losetup", "--find", "--show", "--direct-io=on", file).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("losetup on %s: %w: %s", file, err, strings.TrimSpace(string(out)))
	}
	dev := strings.TrimSpace(string(out))
	p.mu.Lock()
	p.loops = append(p.loops, dev)
	p.mu.Unlock()
	return dev, nil
}

// DetachLoop detaches a loop device AttachLoop made (one already gone is
// fine) and forgets it.
func (p *Procs) DetachLoop(dev string) error {
	p.mu.Lock()
	for i, l := range p.loops {
		if l == dev {
			p.loops = append(p.loops[:i], p.loops[i+1:]...)
			break
		}
	}
	p.mu.Unlock()
	out, err := exec.Command("losetup", "-d", dev).CombinedOutput()
	if err != nil && !strings.Contains(string(out), "No such device") {
		return fmt.Errorf("losetup -d %s: %w: %s", dev, err, strings.TrimSpace(string(out)))
	}
	return nil
}
