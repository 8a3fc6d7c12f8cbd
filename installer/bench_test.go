package installer

import (
	"context"
	"io"
	"log/slog"
	"testing"

	"github.com/quantix/quantix"
)

// BenchmarkInstallImageFile measures a whole unattended install (read the medium,
// scan, plan, write, verify twice, finish) onto a sparse disk image file of 4 GiB
// and of 2 TiB, the way the installer writes a real disk:
//
//	go test ./installer -run '^$' -bench InstallImageFile -benchtime 3x
func BenchmarkInstallImageFile(b *testing.B) {
	for _, c := range []struct {
		name string
		size int64
	}{{"4GiB", 4 << 30}, {"2TiB", 2 << 40}} {
		b.Run(c.name, func(b *testing.B) {
			med, err := OpenMedium(testMedium(b))
			if err != nil {
				b.Fatal(err)
			}
			a, err := ParseAnswer("install.toml", []byte("wipe = true\n"+testAnswerOS), quantix.ImageQuantixOS)
			if err != nil {
				b.Fatal(err)
			}
			s := fakeSystem(b, fakeDisk{Name: "vda", Size: c.size, Serial: "QX-SERIAL-1"})
			log := slog.New(slog.NewTextHandler(io.Discard, nil))
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				in, err := New(Config{Image: quantix.ImageQuantixOS, VolumeLabel: "QUANTIX-OS", Answer: a, Medium: med, Scanner: s, Cmdline: quantix.ParseCmdline("console=ttyS0")}, log)
				if err != nil {
					b.Fatal(err)
				}
				if _, err := in.Run(context.Background()); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
