{{/*
Checks every object runs first. values.schema.json already checked the shapes; these are the rules
that tie values to the release: Argo CD renders with the Application's destination namespace as the
release namespace, and a preview must never render into any other namespace.
*/}}
{{- define "fr.check" -}}
{{- if ne .Release.Namespace .Values.namespace -}}
{{- fail (printf "values.namespace %q is not the release namespace %q (the Application's destination)" .Values.namespace .Release.Namespace) -}}
{{- end -}}
{{- if not (hasPrefix "preview-" .Values.namespace) -}}
{{- fail (printf "values.namespace %q does not start with preview-" .Values.namespace) -}}
{{- end -}}
{{- end }}

{{/* Labels of everything that belongs to the feature (the namespace component). */}}
{{- define "fr.featureLabels" -}}
{{- $labels := dict
  "devstack.io/feature" .Values.feature
  "app.kubernetes.io/part-of" "devstack"
  "app.kubernetes.io/managed-by" .Release.Service
  "helm.sh/chart" (printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_")
-}}
{{- toYaml $labels -}}
{{- end }}

{{/*
Labels of the objects of one service. app.kubernetes.io/instance is left alone on purpose: Argo CD's
label-based resource tracking owns it.
*/}}
{{- define "fr.serviceLabels" -}}
{{- $labels := fromYaml (include "fr.featureLabels" .) -}}
{{- $_ := set $labels "devstack.io/service" .Values.service -}}
{{- $_ := set $labels "devstack.io/component" "service" -}}
{{- $_ := set $labels "app.kubernetes.io/name" .Values.service -}}
{{- toYaml $labels -}}
{{- end }}

{{/* The Deployment's selector (immutable: only the two names that never change). */}}
{{- define "fr.selectorLabels" -}}
{{- toYaml (dict "devstack.io/feature" .Values.feature "devstack.io/service" .Values.service) -}}
{{- end }}

{{/* Annotations of every object: the expiry, and kube-janitor's backstop unless it is "never". */}}
{{- define "fr.annotations" -}}
{{- $annotations := dict "devstack.io/expires-at" .Values.expiresAt -}}
{{- if and .Values.janitor.enabled (ne .Values.expiresAt "never") -}}
{{- $_ := set $annotations "janitor/expires" .Values.expiresAt -}}
{{- end -}}
{{- toYaml $annotations -}}
{{- end }}

{{/* apiVersion of Traefik's CRDs. */}}
{{- define "fr.traefikApiVersion" -}}
{{- if eq .Values.traefik.version "v2" -}}traefik.containo.us/v1alpha1{{- else -}}traefik.io/v1alpha1{{- end -}}
{{- end }}

{{/* Name of the Middleware that sets the feature header. */}}
{{- define "fr.middlewareName" -}}
{{- printf "%s-feature-header" .Values.service -}}
{{- end }}

{{/*
Go regular expression matching a W3C baggage header that has the list member <baggageKey>=<feature>:
members are separated by "," with optional whitespace, a member may carry ";properties", and the
value must end where the member ends, so devstack-feature=login-fix2 does not match login-fix.
*/}}
{{- define "fr.baggageRegexp" -}}
{{- printf "(?:^|,)\\s*%s\\s*=\\s*%s\\s*(?:;[^,]*)?(?:,|$)" (regexQuoteMeta .Values.routing.baggageKey) (regexQuoteMeta .Values.feature) -}}
{{- end }}

{{/* The three route rules (Traefik v3 syntax, or v2 with traefik.version=v2). */}}
{{- define "fr.matchPreviewHost" -}}
{{- printf "Host(`%s`)" .Values.host -}}
{{- end }}

{{- define "fr.matchBaseHeader" -}}
{{- $header := ternary "Headers" "Header" (eq .Values.traefik.version "v2") -}}
{{- printf "Host(`%s`) && %s(`%s`, `%s`)" .Values.baseHost $header .Values.routing.header .Values.feature -}}
{{- end }}

{{- define "fr.matchBaseBaggage" -}}
{{- $header := ternary "HeadersRegexp" "HeaderRegexp" (eq .Values.traefik.version "v2") -}}
{{- printf "Host(`%s`) && %s(`baggage`, `%s`)" .Values.baseHost $header (include "fr.baggageRegexp" .) -}}
{{- end }}

{{/* One probe (readiness or liveness): call with (dict "root" $ "probe" <settings>). */}}
{{- define "fr.probe" -}}
{{- $root := .root -}}
{{- $probe := deepCopy (.probe | default dict) -}}
{{- if eq $root.Values.probes.type "http" -}}
{{- $_ := set $probe "httpGet" (dict "path" $root.Values.probes.path "port" "http") -}}
{{- else -}}
{{- $_ := set $probe "tcpSocket" (dict "port" "http") -}}
{{- end -}}
{{- toYaml $probe -}}
{{- end }}
