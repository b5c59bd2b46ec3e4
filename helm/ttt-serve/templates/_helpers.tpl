{{/* Names, labels and the server's command line, shared by every manifest. */}}

{{- define "ttt-serve.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fully qualified app name; 52 characters leave room for StatefulSet pod suffixes. */}}
{{- define "ttt-serve.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 52 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "ttt-serve.headlessName" -}}
{{- printf "%s-headless" (include "ttt-serve.fullname" .) }}
{{- end }}

{{- define "ttt-serve.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "ttt-serve.selectorLabels" -}}
app.kubernetes.io/name: {{ include "ttt-serve.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "ttt-serve.labels" -}}
helm.sh/chart: {{ include "ttt-serve.chart" . }}
{{ include "ttt-serve.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: ttt-serve
{{- end }}

{{- define "ttt-serve.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "ttt-serve.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The CUDA build of the image when gpu.enabled (Dockerfile --build-arg CUDA=...). */}}
{{- define "ttt-serve.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag }}
{{- if .Values.gpu.enabled }}
{{- $tag = printf "%s%s" $tag .Values.image.cudaSuffix }}
{{- end }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}

{{- define "ttt-serve.device" -}}
{{- if and .Values.gpu.enabled (eq .Values.server.device "cpu") }}cuda{{ else }}{{ .Values.server.device }}{{ end }}
{{- end }}

{{- define "ttt-serve.secretName" -}}
{{- if .Values.secret.existingSecret }}{{ .Values.secret.existingSecret }}{{ else }}{{ include "ttt-serve.fullname" . }}{{ end }}
{{- end }}

{{- define "ttt-serve.secretEnabled" -}}
{{- if or .Values.secret.create .Values.secret.existingSecret }}true{{ end }}
{{- end }}

{{/* The server's flags (docs/contract.md), one list item each. */}}
{{- define "ttt-serve.args" -}}
{{- $s := .Values.server -}}
- {{ printf "--model=%s" $s.model | quote }}
- {{ printf "--listen=0.0.0.0:%d" ($s.grpcPort | int64) | quote }}
- {{ printf "--metrics_listen=0.0.0.0:%d" ($s.metricsPort | int64) | quote }}
- {{ printf "--checkpoint_dir=%s" .Values.persistence.mountPath | quote }}
- {{ printf "--memory_budget_mb=%d" ($s.memoryBudgetMb | int64) | quote }}
- {{ printf "--max_sessions=%d" ($s.maxSessions | int64) | quote }}
- {{ printf "--max_resident_sessions=%d" ($s.maxResidentSessions | int64) | quote }}
- {{ printf "--state_cache_mb=%d" ($s.stateCacheMb | int64) | quote }}
- {{ printf "--compact_idle_s=%d" ($s.compactIdleS | int64) | quote }}
- {{ printf "--compact_kv_cache=%t" $s.compactKvCache | quote }}
- {{ printf "--compact_kv_dtype=%s" $s.compactKvDtype | quote }}
{{- if $s.tttDeltaDtype }}
- {{ printf "--ttt_delta_dtype=%s" $s.tttDeltaDtype | quote }}
{{- end }}
- {{ printf "--idle_ttl_s=%d" ($s.idleTtlS | int64) | quote }}
- {{ printf "--device=%s" (include "ttt-serve.device" .) | quote }}
- {{ printf "--dtype=%s" $s.dtype | quote }}
- {{ printf "--max_batch_tokens=%d" ($s.maxBatchTokens | int64) | quote }}
- {{ printf "--max_decode_batch_tokens=%d" ($s.maxDecodeBatchTokens | int64) | quote }}
- {{ printf "--checkpoint_on_shutdown=%t" $s.checkpointOnShutdown | quote }}
- {{ printf "--shutdown_delay_s=%d" ($s.shutdownDelayS | int64) | quote }}
- {{ printf "--drain_timeout_s=%d" ($s.drainTimeoutS | int64) | quote }}
{{- /* The engine's threads: server.torchThreads, else the CPU request (TTT_CPU_REQUEST, the
downward API; Kubernetes expands $(...) in args). */}}
{{- if $s.torchThreads }}
- {{ printf "--threads=%v" $s.torchThreads | quote }}
{{- else }}
- "--threads=$(TTT_CPU_REQUEST)"
{{- end }}
{{- include "ttt-serve.storeArgs" . }}
{{- include "ttt-serve.securityArgs" . }}
{{- range $s.extraArgs }}
- {{ . | quote }}
{{- end }}
{{- end }}

{{/* persistence.mode=shared: the volume holds state blobs and etcd coordinates the replicas
(docs/coordination.md): each process holds one etcd lease of --lease_s, labelled with its pod
name. perPod: no flag, each server runs alone on its own volume. */}}
{{- define "ttt-serve.storeArgs" -}}
{{- $e := .Values.etcd -}}
{{- if ne .Values.persistence.mode "shared" }}
{{- if or $e.endpoints $e.deploy }}
{{- fail "etcd.endpoints and etcd.deploy are for persistence.mode=shared: with perPod volumes each replica runs alone and uses no etcd" }}
{{- end }}
{{- else }}
{{- $endpoints := include "ttt-serve.etcdEndpoints" . }}
- "--replica_id=$(POD_NAME)"
- {{ printf "--etcd_endpoints=%s" $endpoints | quote }}
- {{ printf "--etcd_prefix=%s" $e.prefix | quote }}
{{- if $e.tls.secretName }}
- {{ printf "--etcd_ca_file=%s/ca.crt" $e.tls.mountPath | quote }}
- {{ printf "--etcd_cert_file=%s/tls.crt" $e.tls.mountPath | quote }}
- {{ printf "--etcd_key_file=%s/tls.key" $e.tls.mountPath | quote }}
{{- end }}
{{- with .Values.persistence.store }}
{{- if ge (int .leaseMarginS) (int .leaseS) }}
{{- fail "persistence.store.leaseMarginS must be under leaseS: a replica stops serving leaseMarginS before its etcd lease could expire" }}
{{- end }}
- {{ printf "--durability=%s" .durability | quote }}
- {{ printf "--lease_s=%d" (.leaseS | int64) | quote }}
{{- if gt (int .leaseMarginS) 0 }}
- {{ printf "--lease_margin_s=%d" (.leaseMarginS | int64) | quote }}
{{- end }}
- {{ printf "--persist_interval_s=%d" (.persistIntervalS | int64) | quote }}
{{- end }}
{{- end }}
{{- end }}

{{/* --etcd_endpoints: every member of the chart's own etcd, or etcd.endpoints; refuses shared mode
without either, both at once, and TLS files for plaintext endpoints. */}}
{{- define "ttt-serve.etcdEndpoints" -}}
{{- $e := .Values.etcd -}}
{{- if and $e.deploy $e.endpoints }}
{{- fail "etcd: set etcd.endpoints (an existing cluster) or etcd.deploy=true (the chart's own), not both" }}
{{- end }}
{{- if $e.deploy }}
{{- if $e.tls.secretName }}
{{- fail "etcd.tls.secretName is for an existing cluster's https:// endpoints: the chart's own etcd (etcd.deploy) speaks plaintext inside the namespace" }}
{{- end }}
{{- $urls := list }}
{{- range $i := until (int $e.members) }}
{{- $urls = append $urls (printf "http://%s:%d" (include "ttt-serve.etcdMemberHost" (list $ $i)) (int $e.clientPort)) }}
{{- end }}
{{- join "," $urls }}
{{- else if $e.endpoints }}
{{- if $e.tls.secretName }}
{{- range $e.endpoints }}
{{- if not (hasPrefix "https://" .) }}
{{- fail (printf "etcd.tls.secretName gives client certificates for https:// endpoints: etcd.endpoints has %q" .) }}
{{- end }}
{{- end }}
{{- end }}
{{- join "," $e.endpoints }}
{{- else }}
{{- fail "persistence.mode=shared: replicas share sessions only through etcd: set etcd.endpoints (an existing cluster's client URLs) or etcd.deploy=true (a 3-member etcd StatefulSet of this chart)" }}
{{- end }}
{{- end }}

{{/* The chart's own etcd (etcd.deploy): names, labels, one member's stable DNS name. */}}
{{- define "ttt-serve.etcdName" -}}
{{- printf "%s-etcd" (include "ttt-serve.fullname" .) }}
{{- end }}

{{- define "ttt-serve.etcdSelectorLabels" -}}
app.kubernetes.io/name: {{ include "ttt-serve.name" . }}-etcd
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* (list $ ordinal) -> <etcd>-N.<etcd>.<namespace>.svc, through the headless Service. */}}
{{- define "ttt-serve.etcdMemberHost" -}}
{{- $root := index . 0 }}
{{- $name := include "ttt-serve.etcdName" $root }}
{{- printf "%s-%d.%s.%s.svc" $name (index . 1) $name $root.Release.Namespace }}
{{- end }}

{{/* --initial-cluster: <etcd>-N=http://<member N>:<peer port> for every ordinal. */}}
{{- define "ttt-serve.etcdInitialCluster" -}}
{{- $e := .Values.etcd }}
{{- $peers := list }}
{{- range $i := until (int $e.members) }}
{{- $peers = append $peers (printf "%s-%d=http://%s:%d" (include "ttt-serve.etcdName" $) $i (include "ttt-serve.etcdMemberHost" (list $ $i)) (int $e.peerPort)) }}
{{- end }}
{{- join "," $peers }}
{{- end }}

{{/* The security flags (docs/contract.md, "Authentication"), from security: and the Secret's
files; refuses combinations that cannot work. */}}
{{- define "ttt-serve.securityArgs" -}}
{{- $sec := .Values.security -}}
{{- $dir := .Values.secret.mountPath -}}
{{- if and (or $sec.tls $sec.tokens) (not (include "ttt-serve.secretEnabled" .)) }}
{{- fail "security.tls and security.tokens read the Secret: set secret.create or secret.existingSecret" }}
{{- end }}
{{- if and $sec.mutualTls (not $sec.tls) }}
{{- fail "security.mutualTls needs security.tls" }}
{{- end }}
{{- if and $sec.metricsTls (not (include "ttt-serve.secretEnabled" .)) }}
{{- fail "security.metricsTls reads tls.crt and tls.key from the Secret: set secret.create or secret.existingSecret" }}
{{- end }}
{{- if and $sec.metricsAuth (not $sec.tokens) }}
{{- fail "security.metricsAuth checks tokens from the tokens file: set security.tokens" }}
{{- end }}
{{- if and $sec.tls .Values.routing.envoy.enabled }}
{{- fail "routing.envoy speaks plaintext to the replicas: it cannot front security.tls yet" }}
{{- end }}
{{- if and $sec.mutualTls .Values.routing.haproxy.enabled }}
{{- fail "routing.haproxy terminates TLS: the replicas would see the router's connection, not the client's certificate (the tenant under security.mutualTls); behind the router use security.tokens for tenants" }}
{{- end }}
{{- if gt (int $sec.healthPort) 0 }}
- {{ printf "--health_listen=0.0.0.0:%d" ($sec.healthPort | int64) | quote }}
{{- end }}
{{- if $sec.tls }}
- {{ printf "--tls_cert_file=%s/tls.crt" $dir | quote }}
- {{ printf "--tls_key_file=%s/tls.key" $dir | quote }}
{{- if $sec.mutualTls }}
{{- if not $sec.tokens }}
{{- fail "security.mutualTls needs security.tokens: a client certificate authenticates only through its line in the tokens file" }}
{{- end }}
- {{ printf "--tls_client_ca_file=%s/ca.crt" $dir | quote }}
{{- if $sec.crl }}
- {{ printf "--tls_crl_file=%s/crl.pem" $dir | quote }}
{{- end }}
{{- else if $sec.crl }}
{{- fail "security.crl revokes client certificates: it needs security.mutualTls" }}
{{- end }}
{{- end }}
{{- if $sec.tokens }}
- {{ printf "--auth_tokens_file=%s/tokens" $dir | quote }}
{{- end }}
- {{ printf "--reflection=%s" $sec.reflection | quote }}
{{- if $sec.metricsAuth }}
- "--metrics_auth=true"
{{- end }}
{{- if $sec.metricsTls }}
- {{ printf "--metrics_tls_cert_file=%s/tls.crt" $dir | quote }}
- {{ printf "--metrics_tls_key_file=%s/tls.key" $dir | quote }}
{{- end }}
{{- $q := .Values.quotas }}
{{- if $q.enabled }}
{{- if and (not $q.rules) (not $q.existingConfigMap) }}
{{- fail "quotas.enabled: set quotas.rules (the file's text) or quotas.existingConfigMap" }}
{{- end }}
- {{ printf "--quotas_file=%s/%s" $q.mountPath $q.key | quote }}
{{- end }}
{{- end }}

{{/* The ConfigMap with the quotas file: the chart's own, or an existing one. */}}
{{- define "ttt-serve.quotasConfigMap" -}}
{{- if .Values.quotas.existingConfigMap }}{{ .Values.quotas.existingConfigMap }}{{ else }}{{ include "ttt-serve.fullname" . }}-quotas{{ end }}
{{- end }}

{{/* The port the kubelet probes: the plaintext health listener when there is one. */}}
{{- define "ttt-serve.probePort" -}}
{{- if gt (int .Values.security.healthPort) 0 }}{{ .Values.security.healthPort }}{{ else }}{{ .Values.server.grpcPort }}{{ end }}
{{- end }}

{{- define "ttt-serve.grpcProbe" -}}
grpc:
  port: {{ .port }}
  {{- with .probe.service }}
  service: {{ . | quote }}
  {{- end }}
periodSeconds: {{ .probe.periodSeconds }}
failureThreshold: {{ .probe.failureThreshold }}
timeoutSeconds: {{ .probe.timeoutSeconds }}
{{- end }}

{{/*
A duration as HAProxy writes it ("500ms", "1s", "2m"; the schema allows only these) in
milliseconds.
*/}}
{{- define "ttt-serve.durationMs" -}}
{{- $v := toString . -}}
{{- if hasSuffix "ms" $v -}}{{ trimSuffix "ms" $v | int }}
{{- else if hasSuffix "m" $v -}}{{ mul (trimSuffix "m" $v | int) 60000 }}
{{- else -}}{{ mul (trimSuffix "s" $v | int) 1000 }}
{{- end -}}
{{- end -}}
