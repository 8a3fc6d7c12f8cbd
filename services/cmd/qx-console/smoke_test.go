package main

import (
	"testing"
	"time"
)

func TestSmoke(t *testing.T) {
	e := newEnv(t)
	tm := startConsole(t, startOpts{uts: true}, e.args()...)
	tm.waitFor(5*time.Second, "Quantix OS", "Uptime")
	t.Logf("\n%s", framed(tm.scr.Text()))
	t.Logf("modes %v", tm.scr.Modes())
}
