// Tests of the chart's etcd wiring (docs/coordination.md): in persistence.mode=shared the replicas
// share sessions only through etcd, so they get --etcd_endpoints (an existing cluster's, or every
// member of the chart's own StatefulSet) with its prefix and TLS files; perPod mode gets no etcd.
package main

import (
	"fmt"
	"sort"
	"strings"
	"testing"
)

// selects reports whether a label selector (matchLabels or a Service's plain map) picks labels.
func selects(selector, labels interface{}) bool {
	sel, _ := selector.(obj)
	l, _ := labels.(obj)
	if len(sel) == 0 {
		return false
	}
	for k, v := range sel {
		if l[k] != v {
			return false
		}
	}
	return true
}

func etcdFlags(a map[string]string) []string {
	var out []string
	for f := range a {
		if strings.HasPrefix(f, "etcd_") || f == "replica_id" || f == "lease_s" || f == "lease_margin_s" {
			out = append(out, f)
		}
	}
	sort.Strings(out)
	return out
}

// An existing cluster (scaleout-haproxy.yaml): its URLs, the prefix, the process's lease; no TLS
// files for plaintext endpoints; --lease_margin_s only when set (0: the server's third of --lease_s).
func TestSharedModePassesTheEtcdEndpointsAndPrefix(t *testing.T) {
	_, ctr := serverContainer(t, render(t, "scaleout-haproxy.yaml"))
	a := args(t, ctr)
	for flag, want := range map[string]string{
		"etcd_endpoints": "http://etcd-0.etcd.coord.svc:2379,http://etcd-1.etcd.coord.svc:2379",
		"etcd_prefix":    "/ttt/scaleout/", "replica_id": "$(POD_NAME)", "lease_s": "4",
	} {
		if a[flag] != want {
			t.Errorf("--%s=%q, want %q", flag, a[flag], want)
		}
	}
	for _, f := range []string{"etcd_ca_file", "etcd_cert_file", "etcd_key_file", "lease_margin_s"} {
		if _, ok := a[f]; ok {
			t.Errorf("--%s rendered for plaintext endpoints and the default margin", f)
		}
	}
	r, err := renderOverlay(t, "persistence:\n  store:\n    leaseMarginS: 2\n", "scaleout-haproxy.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if _, ctr = serverContainer(t, r); args(t, ctr)["lease_margin_s"] != "2" {
		t.Errorf("leaseMarginS 2: --lease_margin_s=%q", args(t, ctr)["lease_margin_s"])
	}
}

// gpu-monitoring-hpa.yaml: https:// endpoints with a client certificate from a Secret, mounted
// read-only and passed as the three file flags.
func TestEtcdTlsSecretBecomesFileFlagsAndAReadOnlyVolume(t *testing.T) {
	sts, ctr := serverContainer(t, render(t, "gpu-monitoring-hpa.yaml"))
	a := args(t, ctr)
	dir := "/etc/ttt-serve/etcd"
	for flag, want := range map[string]string{"etcd_ca_file": dir + "/ca.crt",
		"etcd_cert_file": dir + "/tls.crt", "etcd_key_file": dir + "/tls.key", "etcd_prefix": "/ttt/gpu/"} {
		if a[flag] != want {
			t.Errorf("--%s=%q, want %q", flag, a[flag], want)
		}
	}
	for _, e := range strings.Split(a["etcd_endpoints"], ",") {
		if !strings.HasPrefix(e, "https://") {
			t.Errorf("--etcd_endpoints=%s: %q is not https", a["etcd_endpoints"], e)
		}
	}
	var mount obj
	for _, m := range list(ctr, "volumeMounts") {
		if str(m, "mountPath") == dir {
			mount = m.(obj)
		}
	}
	if mount == nil || mount["readOnly"] != true {
		t.Fatalf("nothing mounted read-only at %s: %v", dir, list(ctr, "volumeMounts"))
	}
	items := map[string]string{}
	secret := ""
	for _, v := range list(sts.o, "spec", "template", "spec", "volumes") {
		if str(v, "name") == str(mount, "name") {
			secret = str(v, "secret", "secretName")
			for _, it := range list(v, "secret", "items") {
				items[str(it, "key")] = str(it, "path")
			}
		}
	}
	if secret != "etcd-client-tls" || len(items) != 3 || items["ca.crt"] != "ca.crt" ||
		items["tls.crt"] != "tls.crt" || items["tls.key"] != "tls.key" {
		t.Errorf("etcd TLS volume from Secret %q with items %v, want etcd-client-tls with ca.crt, tls.crt, tls.key",
			secret, items)
	}
}

// etcdMembers returns the chart's etcd StatefulSet and its container's --flag=value arguments.
func etcdMembers(t *testing.T, r rendered) (manifest, obj, map[string]string) {
	t.Helper()
	sts := r.named(t, "StatefulSet", "ttt-ttt-serve-etcd")
	ctr, _ := get(sts.o, "spec", "template", "spec", "containers", 0).(obj)
	a := map[string]string{}
	for _, arg := range list(ctr, "args") {
		s, _ := arg.(string)
		if k, v, ok := strings.Cut(strings.TrimPrefix(s, "--"), "="); ok {
			a[k] = v
		}
	}
	return sts, ctr, a
}

// etcd.deploy (hpa-haproxy.yaml; 5 members by overlay): one member per ordinal, each advertising
// the name --initial-cluster gives it, reachable through a headless Service that publishes unready
// members; the replicas get every member's client URL; a PDB keeps the quorum; compaction on.
func TestDeployedEtcdMembersFormOneClusterTheReplicasUse(t *testing.T) {
	for _, members := range []int{3, 5} {
		r, err := renderOverlay(t, fmt.Sprintf("etcd:\n  members: %d\n", members), "hpa-haproxy.yaml")
		if err != nil {
			t.Fatal(err)
		}
		sts, ctr, a := etcdMembers(t, r)
		if num(sts.o, "spec", "replicas") != members || str(sts.o, "spec", "podManagementPolicy") != "Parallel" {
			t.Errorf("%d members: replicas %v, podManagementPolicy %q (bootstrap needs all at once)", members,
				get(sts.o, "spec", "replicas"), str(sts.o, "spec", "podManagementPolicy"))
		}
		peers := map[string]string{}
		for _, p := range strings.Split(a["initial-cluster"], ",") {
			name, url, _ := strings.Cut(p, "=")
			peers[name] = url
		}
		var clientURLs []string
		for i := 0; i < members; i++ {
			pod := fmt.Sprintf("%s-%d", sts.name(), i)
			self := func(flag string) string { return strings.ReplaceAll(a[flag], "$(POD_NAME)", pod) }
			wantPeer := fmt.Sprintf("http://%s.%s.serving.svc:%d", pod, str(sts.o, "spec", "serviceName"),
				containerPort(ctr, "peer"))
			if peers[pod] != wantPeer || self("initial-advertise-peer-urls") != wantPeer {
				t.Errorf("member %s: --initial-cluster has %q, it advertises %q, want %q", pod, peers[pod],
					self("initial-advertise-peer-urls"), wantPeer)
			}
			clientURLs = append(clientURLs, self("advertise-client-urls"))
		}
		if len(peers) != members || a["name"] != "$(POD_NAME)" || a["initial-cluster-state"] != "new" {
			t.Errorf("--initial-cluster=%s --name=%s --initial-cluster-state=%s: want %d members named by their pods",
				a["initial-cluster"], a["name"], a["initial-cluster-state"], members)
		}
		if !strings.HasSuffix(a["listen-client-urls"], fmt.Sprintf(":%d", containerPort(ctr, "client"))) ||
			!strings.HasSuffix(a["listen-peer-urls"], fmt.Sprintf(":%d", containerPort(ctr, "peer"))) {
			t.Errorf("listens on %s and %s, container ports %v", a["listen-client-urls"], a["listen-peer-urls"],
				list(ctr, "ports"))
		}
		if a["auto-compaction-mode"] != "periodic" || a["auto-compaction-retention"] != "1h" {
			t.Errorf("compaction: mode %q retention %q", a["auto-compaction-mode"], a["auto-compaction-retention"])
		}
		_, server := serverContainer(t, r)
		if got := args(t, server)["etcd_endpoints"]; got != strings.Join(clientURLs, ",") {
			t.Errorf("--etcd_endpoints=%s, the members advertise %v", got, clientURLs)
		}
		svc := r.named(t, "Service", str(sts.o, "spec", "serviceName"))
		if str(svc.o, "spec", "clusterIP") != "None" || get(svc.o, "spec", "publishNotReadyAddresses") != true {
			t.Errorf("etcd Service %v: want headless, publishing unready members", get(svc.o, "spec"))
		}
		pdb := r.named(t, "PodDisruptionBudget", sts.name())
		if num(pdb.o, "spec", "maxUnavailable") != 1 {
			t.Errorf("etcd PDB %v, want maxUnavailable 1", get(pdb.o, "spec"))
		}
		var claim obj
		if v := list(sts.o, "spec", "volumeClaimTemplates"); len(v) == 1 {
			claim, _ = v[0].(obj)
		}
		mounted := false
		for _, m := range list(ctr, "volumeMounts") {
			mounted = mounted || (str(m, "name") == str(claim, "metadata", "name") &&
				strings.HasPrefix(strings.TrimPrefix(a["data-dir"], str(m, "mountPath")), "/"))
		}
		if claim == nil || !mounted {
			t.Errorf("--data-dir=%s is not on a claim per member: %v", a["data-dir"], list(sts.o, "spec", "volumeClaimTemplates"))
		}
	}
}

// The etcd members and the replicas never select each other's pods: no Service, PDB or
// NetworkPolicy of one covers the other; the etcd NetworkPolicy admits the replicas to the client
// port and only members to the peer port.
func TestDeployedEtcdIsApartFromTheReplicas(t *testing.T) {
	r := render(t, "hpa-haproxy.yaml")
	etcd, _, _ := etcdMembers(t, r)
	server, _ := serverContainer(t, r)
	etcdPods := get(etcd.o, "spec", "template", "metadata", "labels")
	serverPods := get(server.o, "spec", "template", "metadata", "labels")
	for _, m := range r.all {
		sel := get(m.o, "spec", "selector")
		switch m.kind() {
		case "PodDisruptionBudget", "StatefulSet":
			sel = get(sel, "matchLabels")
		case "NetworkPolicy":
			sel = get(m.o, "spec", "podSelector", "matchLabels")
		case "Service":
		default:
			continue
		}
		if selects(sel, etcdPods) && selects(sel, serverPods) {
			t.Errorf("%s %s selects both the replicas and the etcd members", m.kind(), m.name())
		}
	}
	np := r.named(t, "NetworkPolicy", etcd.name())
	from := map[string][]interface{}{}
	for _, rule := range list(np.o, "spec", "ingress") {
		from[str(rule, "ports", 0, "port")] = list(rule, "from")
	}
	admits := func(port string, pods interface{}) bool {
		for _, f := range from[port] {
			if selects(get(f, "podSelector", "matchLabels"), pods) {
				return true
			}
		}
		return false
	}
	if !admits("client", serverPods) || !admits("client", etcdPods) || admits("peer", serverPods) ||
		!admits("peer", etcdPods) {
		t.Errorf("etcd NetworkPolicy ingress %v: want replicas and members on client, only members on peer",
			get(np.o, "spec", "ingress"))
	}
}

// Shared mode needs exactly one source of etcd; values that cannot work fail with what to set.
func TestEtcdValuesThatCannotWorkAreRefused(t *testing.T) {
	shared := "persistence:\n  mode: shared\n  accessModes: [ReadWriteMany]\n"
	for name, c := range map[string]struct{ text, fragment string }{
		"sharedNoEtcd": {shared,
			"persistence.mode=shared: replicas share sessions only through etcd: set etcd.endpoints"},
		"both": {shared + "etcd:\n  deploy: true\n  endpoints: [etcd:2379]\n", "not both"},
		"tlsPlainEndpoint": {shared + "etcd:\n  endpoints: [http://etcd:2379]\n  tls:\n    secretName: s\n",
			`etcd.endpoints has "http://etcd:2379"`},
		"tlsDeployed": {shared + "etcd:\n  deploy: true\n  tls:\n    secretName: s\n",
			"the chart's own etcd (etcd.deploy) speaks plaintext"},
		"perPodDeploy":    {"etcd:\n  deploy: true\n", "are for persistence.mode=shared"},
		"perPodEndpoints": {"etcd:\n  endpoints: [etcd:2379]\n", "are for persistence.mode=shared"},
		"margin": {shared + "  store:\n    leaseS: 6\n    leaseMarginS: 6\netcd:\n  endpoints: [etcd:2379]\n",
			"leaseMarginS must be under leaseS"},
	} {
		_, err := renderOverlay(t, c.text)
		if err == nil || !strings.Contains(err.Error(), c.fragment) {
			t.Errorf("%s: want an error with %q, got %v", name, c.fragment, err)
		}
	}
	for name, text := range map[string]string{
		"noPort":  "etcd:\n  endpoints: [http://etcd]\n",
		"scheme":  "etcd:\n  endpoints: [\"grpc://etcd:2379\"]\n",
		"members": "etcd:\n  members: 2\n",
		"prefix":  "etcd:\n  prefix: ttt\n",
	} {
		_, err := renderOverlay(t, text)
		if err == nil || !strings.Contains(err.Error(), "schema") {
			t.Errorf("%s: want a schema error, got %v", name, err)
		}
	}
}

// perPod mode (the default, scaleout.yaml, secured.yaml): each server alone on its own volume, no
// etcd flag, no store flag, nothing of etcd rendered.
func TestPerPodModeUsesNoEtcd(t *testing.T) {
	for _, sc := range [][]string{{}, {"scaleout.yaml"}, {"secured.yaml"}} {
		r := render(t, sc...)
		_, ctr := serverContainer(t, r)
		if f := etcdFlags(args(t, ctr)); len(f) != 0 {
			t.Errorf("%v: perPod mode passes %v", sc, f)
		}
		for _, m := range r.all {
			if strings.Contains(m.name(), "etcd") || str(m.o, "metadata", "labels", "app.kubernetes.io/component") == "etcd" {
				t.Errorf("%v: perPod mode renders %s %s", sc, m.kind(), m.name())
			}
		}
	}
}
