{{/* The release's objects are named after it: devstack (release "devstack"), or <release>-devstack. */}}
{{- define "devstack.fullname" -}}
{{- if contains "devstack" .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-devstack" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end }}

{{- define "devstack.serviceAccountName" -}}
{{- .Values.serviceAccount.name | default (include "devstack.fullname" .) -}}
{{- end }}

{{- define "devstack.selectorLabels" -}}
app.kubernetes.io/name: devstack
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "devstack.labels" -}}
{{ include "devstack.selectorLabels" . }}
app.kubernetes.io/part-of: devstack
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end }}

{{/* The image, in one place: the Deployment and the hooks' default. */}}
{{- define "devstack.imageTag" -}}
{{- .Values.image.tag | default .Chart.AppVersion -}}
{{- end }}

{{/*
devstack.yaml: .Values.config, plus what follows from the install where config does not say it.
*/}}
{{- define "devstack.config" -}}
{{- $config := deepCopy (.Values.config | default dict) -}}
{{- $_ := set $config "state_dir" ($config.state_dir | default "/var/lib/devstack") -}}
{{- $hooks := $config.hooks | default dict -}}
{{- if not $hooks.image -}}
{{- $_ := set $hooks "image" (dict "repository" .Values.image.repository "tag" (include "devstack.imageTag" .)) -}}
{{- end -}}
{{- $_ := set $config "hooks" $hooks -}}
{{- $cluster := $config.cluster | default dict -}}
{{- $election := $cluster.leader_election | default dict -}}
{{- if not (hasKey $election "enabled") -}}
{{- $_ := set $election "enabled" true -}}
{{- end -}}
{{- $_ := set $election "name" ($election.name | default .Values.rbac.leaseName) -}}
{{- $_ := set $cluster "leader_election" $election -}}
{{- $argocd := $cluster.argocd | default dict -}}
{{- if not (hasKey $argocd "enabled") -}}
{{- $_ := set $argocd "enabled" true -}}
{{- end -}}
{{- $_ := set $argocd "namespace" ($argocd.namespace | default .Values.rbac.argocdNamespace) -}}
{{- $_ := set $argocd "applicationsets" ($argocd.applicationsets | default .Values.rbac.applicationSets) -}}
{{- $_ := set $cluster "argocd" $argocd -}}
{{- $_ := set $config "cluster" $cluster -}}
{{- toYaml $config -}}
{{- end }}
