package crashtest

import (
	"errors"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
)

// ErrNoModule is returned by Build outside the wbcache module.
var ErrNoModule = errors.New("not inside the wbcache module")

// ModuleRoot is the directory of the go.mod the go command sees.
func ModuleRoot() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	mod := strings.TrimSpace(string(out))
	if mod == "" || mod == "/dev/null" {
		return "", ErrNoModule
	}
	return filepath.Dir(mod), nil
}

// Build builds each command (a directory under cmd/, e.g. "wbcache") of
// the module into dir and returns the path of each binary by name.
func Build(dir string, cmds ...string) (map[string]string, error) {
	root, err := ModuleRoot()
	if err != nil {
		return nil, err
	}
	bins := map[string]string{}
	for _, c := range cmds {
		bin := filepath.Join(dir, c)
		cmd := exec.Command("go", "build", "-o", bin, "./cmd/"+c)
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			return nil, fmt.Errorf("go build ./cmd/%s: %w\n%s", c, err, out)
		}
		bins[c] = bin
	}
	return bins, nil
}
