package api

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

func TestParseManagementIP(t *testing.T) {
	cases := []struct {
		in, want, err string
	}{
		{in: "10.0.0.5", want: "10.0.0.5"},
		{in: "10.0.0.5:8080", want: "10.0.0.5"},
		{in: "[2001:db8::1]:443", want: "2001:db8::1"},
		{in: "[2001:db8::1]", want: "2001:db8::1"},
		{in: "2001:db8::1", want: "2001:db8::1"},
		{in: "::ffff:192.0.2.1", want: "192.0.2.1"},
		{in: "[::ffff:192.0.2.1]:80", want: "192.0.2.1"},
		{in: "fe80::1%eth0", want: "fe80::1"},
		{in: "", err: "management_ip is empty"},
		{in: "10.0.0", err: "not an IP address"},
		{in: "300.0.0.1", err: "not an IP address"},
		{in: "10.0.0.1:70000", err: "not an IP address"},
		{in: "10.0.0.1/24", err: "not an IP address"},
		{in: "[10.0.0.1]", err: "not an IP address"},
		{in: "host.example:80", err: "not an IP address"},
		{in: " 10.0.0.1", err: "not an IP address"},
		{in: "0.0.0.0", err: "not a unicast address"},
		{in: "[::]:80", err: "not a unicast address"},
		{in: "224.0.0.1", err: "not a unicast address"},
	}
	for _, tc := range cases {
		got, err := ParseManagementIP(tc.in)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) || !strings.Contains(err.Error(), "management_ip") {
				t.Errorf("ParseManagementIP(%q) = %v, %v; want an error naming management_ip and %q", tc.in, got, err, tc.err)
			}
			continue
		}
		if err != nil || got.String() != tc.want {
			t.Errorf("ParseManagementIP(%q) = %v, %v; want %s", tc.in, got, err, tc.want)
		}
	}
}

func TestDecodeErrors(t *testing.T) {
	type body struct {
		Name  string `json:"name"`
		Count int    `json:"count"`
		Inner struct {
			N int `json:"n"`
		} `json:"inner"`
	}
	cases := []struct {
		in   string
		code int
		msg  string
	}{
		{`{"name":"a","count":1}`, 0, ""},
		{``, 400, "empty"},
		{`{"name":`, 400, "truncated"},
		{`{"name":"a",}`, 400, "not valid JSON at byte"},
		{`{"nmae":"a"}`, 400, `unknown field "nmae"`},
		{`{"count":"x"}`, 400, `field "count"`},
		{`{"inner":{"n":"x"}}`, 400, `field "inner.n"`},
		{`"text"`, 400, "want an object"},
		{`{} {}`, 400, "more than one JSON value"},
		{`{"name":"` + strings.Repeat("x", 1<<20) + `"}`, 413, "larger than 1048576 bytes"},
	}
	for _, tc := range cases {
		r := httptest.NewRequest(http.MethodPost, "/", strings.NewReader(tc.in))
		var b body
		err := decode(httptest.NewRecorder(), r, &b)
		if tc.code == 0 {
			if err != nil {
				t.Errorf("decode(%.40q) = %v", tc.in, err)
			}
			continue
		}
		he, ok := err.(*httpError)
		if !ok || he.code != tc.code || !strings.Contains(he.msg, tc.msg) {
			t.Errorf("decode(%.40q) = %v, want %d naming %q", tc.in, err, tc.code, tc.msg)
		}
	}
}

func TestMetricsExposition(t *testing.T) {
	m := NewMetrics()
	m.Registration("registered")
	m.Registration("registered")
	m.Registration("reenrolled")
	m.Heartbeat()
	m.Observe("POST", "/api/v1/nodes/{id}/heartbeat", 200, 3*time.Millisecond)
	m.Observe("POST", "/api/v1/nodes/{id}/heartbeat", 200, 2*time.Second)
	var b strings.Builder
	m.Write(&b, map[string]int{"ready": 2, "disconnected": 0}, 1)
	out := b.String()
	for _, want := range []string{
		`qx_vdc_registrations_total{kind="reenrolled"} 1`,
		`qx_vdc_registrations_total{kind="registered"} 2`,
		"qx_vdc_heartbeats_total 1\n",
		"qx_vdc_heartbeat_batches_total 1\n",
		`qx_vdc_nodes{phase="disconnected"} 0`,
		`qx_vdc_nodes{phase="ready"} 2`,
		`qx_vdc_http_request_duration_seconds_bucket{method="POST",route="/api/v1/nodes/{id}/heartbeat",code="200",le="0.0025"} 0`,
		`qx_vdc_http_request_duration_seconds_bucket{method="POST",route="/api/v1/nodes/{id}/heartbeat",code="200",le="0.005"} 1`,
		`qx_vdc_http_request_duration_seconds_bucket{method="POST",route="/api/v1/nodes/{id}/heartbeat",code="200",le="2.5"} 2`,
		`qx_vdc_http_request_duration_seconds_bucket{method="POST",route="/api/v1/nodes/{id}/heartbeat",code="200",le="+Inf"} 2`,
		`qx_vdc_http_request_duration_seconds_count{method="POST",route="/api/v1/nodes/{id}/heartbeat",code="200"} 2`,
		`qx_vdc_http_request_duration_seconds_sum{method="POST",route="/api/v1/nodes/{id}/heartbeat",code="200"} 2.003`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("exposition lacks %s:\n%s", want, out)
		}
	}
	// Every sample line belongs to a family declared with # TYPE.
	types := map[string]bool{}
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		if f, ok := strings.CutPrefix(line, "# TYPE "); ok {
			types[strings.Fields(f)[0]] = true
			continue
		}
		if strings.HasPrefix(line, "#") {
			continue
		}
		name := line[:strings.IndexAny(line, "{ ")]
		for _, suf := range []string{"_bucket", "_sum", "_count"} {
			if base, ok := strings.CutSuffix(name, suf); ok && types[base] {
				name = base
			}
		}
		if !types[name] {
			t.Errorf("sample %q has no # TYPE line", line)
		}
	}
}
