{{/* Names and labels. */}}
{{- define "changevault.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "changevault.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "changevault.selectorLabels" -}}
app.kubernetes.io/name: {{ include "changevault.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "changevault.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "changevault.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "changevault.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "changevault.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The agent's configuration: the user's `config` plus the keys the chart owns
(paths of mounted secrets and volumes, the metrics port).
*/}}
{{- define "changevault.config" -}}
{{- $c := deepCopy .Values.config }}
{{- $source := $c.source }}
{{- if .Values.database.existingSecret }}
{{- $_ := set $source "password_file" "/etc/changevault/secrets/db/password" }}
{{- end }}
{{- if $c.kafka }}
{{- if .Values.kafkaCredentials.existingSecret }}
{{- $security := default (dict) $c.kafka.security }}
{{- $_ := set $security "password_file" "/etc/changevault/secrets/kafka/password" }}
{{- $_ := set $c.kafka "security" $security }}
{{- end }}
{{- else }}
{{- $_ := unset $c "kafka" }}
{{- end }}
{{- $recipients := list "/etc/changevault/keys/archive.pub" }}
{{- range .Values.keys.extraRecipients }}
{{- $recipients = append $recipients (printf "/etc/changevault/keys/%s" .) }}
{{- end }}
{{- $_ := set $c "encryption" (dict "recipients" $recipients "signing_key_file" "/etc/changevault/keys/signing.key" "keyhash_key_file" "/etc/changevault/keys/keyhash.key") }}
{{- $_ := set $c "state_dir" "/var/lib/changevault/state" }}
{{- $_ := set $c "metrics_listen" (printf ":%d" (int .Values.metrics.port)) }}
{{- toYaml $c }}
{{- end }}
