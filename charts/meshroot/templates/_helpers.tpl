{{/* The release's base name, at most 63 characters. */}}
{{- define "meshroot.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "meshroot.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "meshroot.labels" -}}
{{ include "meshroot.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: meshroot
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{/* Namespaces of the istiods meshroot writes istiod-tls or cacerts into. */}}
{{- define "meshroot.istiodNamespaces" -}}
{{- $namespaces := list -}}
{{- range .Values.meshes -}}
{{- $namespaces = append $namespaces .istiod.namespace -}}
{{- end -}}
{{- range .Values.extraIstiodNamespaces -}}
{{- $namespaces = append $namespaces . -}}
{{- end -}}
{{- $namespaces | uniq | sortAlpha | toJson -}}
{{- end -}}

{{/* ConfigMap names meshroot distributes the trust bundle in. */}}
{{- define "meshroot.rootConfigMapNames" -}}
{{- $names := list "istio-ca-root-cert" -}}
{{- range .Values.meshes -}}
{{- $names = append $names (.rootConfigMapName | default "istio-ca-root-cert") -}}
{{- end -}}
{{- range .Values.extraRootConfigMapNames -}}
{{- $names = append $names . -}}
{{- end -}}
{{- $names | uniq | sortAlpha | toJson -}}
{{- end -}}
