package initd

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"

	"github.com/quantix/quantix"
)

// RunHaltHooks runs the image's halt hooks in order before the services stop on
// a power-off or reboot (Quantix-OS shuts its guests down this way while libvirtd
// still runs). Each gets its timeout, then its whole process group is killed; a
// failing hook is logged and the halt goes on: nothing may keep a machine from
// powering off.
func RunHaltHooks(hooks []quantix.HaltHook, action quantix.HaltAction, log *slog.Logger) {
	for i, h := range hooks {
		timeout := time.Duration(h.TimeoutSeconds) * time.Second
		if h.TimeoutSeconds <= 0 {
			timeout = quantix.DefaultHaltHookTimeout * time.Second
		}
		t0 := time.Now()
		out, err := runHaltHook(h, action, timeout)
		took := time.Since(t0).Round(time.Millisecond)
		line := strings.TrimSpace(out)
		if err != nil {
			log.Error("halt hook failed; halting anyway", "hook", i, "command", h.Command, "took", took, "err", err, "output", line)
			continue
		}
		log.Info("halt hook done", "hook", i, "command", h.Command, "took", took, "output", line)
	}
}

func runHaltHook(h quantix.HaltHook, action quantix.HaltAction, timeout time.Duration) (string, error) {
	var out bytes.Buffer
	cmd := exec.Command(h.Command, h.Args...)
	cmd.Env = append(os.Environ(), "QUANTIX_HALT="+string(action))
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return "", fmt.Errorf("start %s: %w", h.Command, err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	select {
	case err := <-done:
		if err != nil {
			return out.String(), fmt.Errorf("%s: %w", h.Command, err)
		}
		return out.String(), nil
	case <-ctx.Done():
		signalGroup(cmd.Process.Pid, syscall.SIGKILL)
		<-done
		return out.String(), fmt.Errorf("%s: killed after %v", h.Command, timeout)
	}
}
