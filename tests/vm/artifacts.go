package vm

import (
	"testing"

	"github.com/quantix/quantix/tests/artifacts"
)

// ArtifactDir returns the folder for test t's VM artifacts (serial logs, QEMU stderr
// and command lines, pcaps): artifacts.Dir, shared with the test's other artifacts.
func ArtifactDir(t testing.TB) string { return artifacts.Dir(t) }
