{{/* Names, labels and the derived settings every template shares. */}}

{{- define "gomemlimit-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "gomemlimit-operator.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else if contains (include "gomemlimit-operator.name" .) .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name (include "gomemlimit-operator.name" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{- define "gomemlimit-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "gomemlimit-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "gomemlimit-operator.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 }}
{{ include "gomemlimit-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "gomemlimit-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "gomemlimit-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "gomemlimit-operator.webhookConfigurationName" -}}
{{- include "gomemlimit-operator.fullname" . }}
{{- end }}

{{/* managed (the operator's own CA, the default), certManager or existingSecret. */}}
{{- define "gomemlimit-operator.certificateMode" -}}
{{- if and .Values.certManager.enabled .Values.existingSecret.name }}
{{- fail "certManager.enabled and existingSecret.name exclude each other: choose one" }}
{{- else if .Values.certManager.enabled }}certManager
{{- else if .Values.existingSecret.name }}existingSecret
{{- else }}managed
{{- end }}
{{- end }}

{{- define "gomemlimit-operator.certificateSecretName" -}}
{{- $mode := include "gomemlimit-operator.certificateMode" . }}
{{- if eq $mode "existingSecret" }}{{ .Values.existingSecret.name }}
{{- else if eq $mode "certManager" }}{{ include "gomemlimit-operator.fullname" . }}-tls
{{- else }}{{ include "gomemlimit-operator.fullname" . }}-certs
{{- end }}
{{- end }}

{{/* The webhook's container port, and the Service port: equal under hostNetwork. */}}
{{- define "gomemlimit-operator.servicePort" -}}
{{- if .Values.hostNetwork }}{{ .Values.webhook.port }}{{ else }}{{ .Values.service.port }}{{ end }}
{{- end }}

{{/* Never mutated: the release namespace, kube-system and webhook.exemptNamespaces. JSON. */}}
{{- define "gomemlimit-operator.exemptNamespaces" -}}
{{- concat (list .Release.Namespace "kube-system") .Values.webhook.exemptNamespaces | uniq | sortAlpha | toJson }}
{{- end }}

{{/* watchNamespaces minus the exempt ones, sorted (JSON); empty means cluster-wide. */}}
{{- define "gomemlimit-operator.watchNamespaces" -}}
{{- $exempt := include "gomemlimit-operator.exemptNamespaces" . | fromJsonArray }}
{{- $only := list }}
{{- range (.Values.watchNamespaces | uniq | sortAlpha) }}
{{- if not (has . $exempt) }}{{ $only = append $only . }}{{ end }}
{{- end }}
{{- if and .Values.watchNamespaces (not $only) }}
{{- fail "every namespace in watchNamespaces is exempt: nothing would be mutated" }}
{{- end }}
{{- $only | toJson }}
{{- end }}

{{- define "gomemlimit-operator.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}
