package vdc_test

import (
	"testing"

	"github.com/quantix/quantix/vdc/vdctest"
)

func TestMain(m *testing.M) { vdctest.Main(m) }
