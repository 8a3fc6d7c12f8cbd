package vm

import "testing"

// TestAgentPort reads the agent's status port from the committed image definition,
// the way the scenarios find the agents' /status.
func TestAgentPort(t *testing.T) {
	p, err := AgentPort()
	if err != nil {
		t.Fatal(err)
	}
	if p <= 0 || p > 65535 {
		t.Fatalf("AgentPort() = %d, want a TCP port", p)
	}
}
