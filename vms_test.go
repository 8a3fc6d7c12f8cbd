package quantix

import "testing"

func TestFormatBytes(t *testing.T) {
	for n, want := range map[int64]string{0: "0 B", 512: "512 B", 1024: "1 KiB", 1536: "1.5 KiB", 4 << 30: "4 GiB",
		3435973837: "3.2 GiB", 64 << 40: "64 TiB", 1 << 62: "4 EiB"} {
		if got := FormatBytes(n); got != want {
			t.Errorf("FormatBytes(%d) = %q, want %q", n, got, want)
		}
	}
}

func TestManagedVMConverged(t *testing.T) {
	cases := []struct {
		vm   ManagedVM
		want bool
	}{
		{ManagedVM{Wanted: WantedRunning, Observed: ObservedRunning, Generation: 3, AppliedGeneration: 3}, true},
		{ManagedVM{Wanted: WantedRunning, Observed: ObservedRunning, Generation: 4, AppliedGeneration: 3}, false},
		{ManagedVM{Wanted: WantedStopped, Observed: ObservedUnknown, Generation: 3, AppliedGeneration: 5}, false},
		{ManagedVM{Wanted: WantedStopped, Observed: ObservedStopped, Generation: 3, AppliedGeneration: 5}, true},
	}
	for _, c := range cases {
		if got := c.vm.Converged(); got != c.want {
			t.Errorf("Converged(%+v) = %v, want %v", c.vm, got, c.want)
		}
	}
}
