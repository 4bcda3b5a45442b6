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

{{/* Name of the wake Service and Middleware of a sleeping service ("--": no service name has it). */}}
{{- define "fr.wakeName" -}}
{{- printf "%s--wake" .Values.service -}}
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

{{/*
--- Provisioning hooks (docs/hooks.md) ---------------------------------------------------------------
values.hooks is built by devstack (devstack.hooks.values.hook_values) from the service's catalog
declaration and the platform settings; a hook is on when its key is present. Optional keys are read
with `get`, never as fields, so a missing one is never an error (the engine may run with
missingkey=error).
*/}}

{{/*
Name of a hook object: devstack-<feature>--<service>-<suffix>, unique per Application in every
namespace (feature and service never contain "--"), at most 63 characters: past that, shortened and
given a 6-character hash of the full name. devstack.hooks.values.object_name is its Python twin.
Call with (dict "root" $ "suffix" "postgres-ensure").
*/}}
{{- define "fr.hookName" -}}
{{- $name := printf "devstack-%s--%s-%s" .root.Values.feature .root.Values.service .suffix -}}
{{- if gt (len $name) 63 -}}
{{- $name = printf "%s-%s" (regexReplaceAll "-+$" (trunc 56 $name) "") (trunc 6 (sha256sum $name)) -}}
{{- end -}}
{{- $name -}}
{{- end }}

{{/* The Secret/ConfigMap a hook writes its results to (devstack.hooks.names.output_name). */}}
{{- define "fr.hookOutput" -}}
{{- printf "devstack-%s-%s" .hook .root.Values.service -}}
{{- end }}

{{/* Name of the service's Redis Deployment and Service (devstack.hooks.values.redis_name). */}}
{{- define "fr.redisName" -}}
{{- printf "devstack-redis-%s" .Values.service -}}
{{- end }}

{{/* Labels of a hook object: the service's, plus the hook and, for Jobs, the action. */}}
{{- define "fr.hookLabels" -}}
{{- $labels := fromYaml (include "fr.serviceLabels" .root) -}}
{{- $_ := set $labels "devstack.io/hook" .hook -}}
{{- with .action }}{{ $_ := set $labels "devstack.io/hook-action" . }}{{ end -}}
{{- toYaml $labels -}}
{{- end }}

{{/*
Labels of a hook Pod (Jobs, Redis). Never both devstack.io/feature and devstack.io/service: those two
select the service's own Pods (its Service and Deployment), which a hook Pod must never join.
*/}}
{{- define "fr.hookPodLabels" -}}
{{- $labels := dict
  "devstack.io/feature" .root.Values.feature
  "devstack.io/hook" .hook
  "devstack.io/hook-service" .root.Values.service
  "app.kubernetes.io/part-of" "devstack"
-}}
{{- with .action }}{{ $_ := set $labels "devstack.io/hook-action" . }}{{ end -}}
{{- toYaml $labels -}}
{{- end }}

{{/*
Annotations of a PreSync hook object (Argo CD maps pre-install/pre-upgrade to PreSync, which runs
before every sync, and the hook weight to the sync wave). before-hook-creation: the object (a failed
Job with its Pod and logs) stays until the next sync replaces it. Call with (dict "root" $ "weight" 1).
*/}}
{{- define "fr.hookAnnotations" -}}
{{- $annotations := fromYaml (include "fr.annotations" .root) -}}
{{- $_ := set $annotations "helm.sh/hook" "pre-install,pre-upgrade" -}}
{{- $_ := set $annotations "helm.sh/hook-weight" (toString .weight) -}}
{{- $_ := set $annotations "helm.sh/hook-delete-policy" "before-hook-creation" -}}
{{- toYaml $annotations -}}
{{- end }}

{{/*
Annotations of a cleanup Job (post-delete: Argo CD's PostDelete, after the Application's resources
are deleted). The value must be exactly "post-delete" (Argo CD compares it as a whole). A Job that
succeeded is deleted (hook-succeeded: nothing of the preview is left); a failed one is kept with its
logs. No kube-janitor annotation: it would delete the Job that runs at the expiry time.
*/}}
{{- define "fr.cleanupAnnotations" -}}
{{- $annotations := dict
  "devstack.io/expires-at" .root.Values.expiresAt
  "helm.sh/hook" "post-delete"
  "helm.sh/hook-weight" (toString .weight)
  "helm.sh/hook-delete-policy" "before-hook-creation,hook-succeeded"
-}}
{{- toYaml $annotations -}}
{{- end }}

{{/* Env of every hook container: which preview, and the hook's own bounded retries. */}}
{{- define "fr.hookContextEnv" -}}
{{- $retry := .Values.hooks.job.retry -}}
{{- $env := list
  (dict "name" "DEVSTACK_HOOK_FEATURE" "value" .Values.feature)
  (dict "name" "DEVSTACK_HOOK_SERVICE" "value" .Values.service)
  (dict "name" "DEVSTACK_HOOK_NAMESPACE" "value" .Values.namespace)
  (dict "name" "DEVSTACK_HOOK_ATTEMPTS" "value" (toString $retry.attempts))
  (dict "name" "DEVSTACK_HOOK_BACKOFF_SECONDS" "value" (toString $retry.backoffSeconds))
  (dict "name" "DEVSTACK_HOOK_MAX_BACKOFF_SECONDS" "value" (toString $retry.maxBackoffSeconds))
-}}
{{- toYaml $env -}}
{{- end }}

{{/*
Role rules in the preview namespace for a hook writing these Secrets and ConfigMaps: create (which
Kubernetes cannot limit by name), and get/update/patch/delete on exactly the named objects.
devstack.hooks.rbac.preview_rules is its Python twin. Call with (dict "secrets" list "configMaps" list).
*/}}
{{- define "fr.previewRules" -}}
{{- $rules := list -}}
{{- range $resource := list "secrets" "configmaps" -}}
{{- $names := ternary $.secrets $.configMaps (eq $resource "secrets") -}}
{{- if $names -}}
{{- $rules = append $rules (dict "apiGroups" (list "") "resources" (list $resource) "verbs" (list "create")) -}}
{{- $rules = append $rules (dict "apiGroups" (list "") "resources" (list $resource) "resourceNames" (sortAlpha (uniq $names)) "verbs" (list "get" "update" "patch" "delete")) -}}
{{- end -}}
{{- end -}}
{{- toYaml $rules -}}
{{- end }}

{{/*
One hook Job: `devstack hook <hook> <action>` from the devstack image, hardened for Pod Security
"restricted" (non-root, read-only root filesystem, no capabilities, RuntimeDefault seccomp), with
bounded retries (backoffLimit) and time (activeDeadlineSeconds), and resource requests and limits.
Call with (dict "root" $ "hook" "postgres" "action" "ensure" "namespace" ns "serviceAccount" name
"automount" true "env" list "weight" 2).
*/}}
{{- define "fr.hookJob" -}}
{{- $root := .root -}}
{{- $hooks := $root.Values.hooks -}}
{{- $job := $hooks.job -}}
apiVersion: batch/v1
kind: Job
metadata:
  name: {{ include "fr.hookName" (dict "root" $root "suffix" (printf "%s-%s" .hook .action)) }}
  namespace: {{ .namespace }}
  labels:
    {{- include "fr.hookLabels" (dict "root" $root "hook" .hook "action" .action) | nindent 4 }}
  annotations:
    {{- if eq .action "cleanup" }}
    {{- include "fr.cleanupAnnotations" (dict "root" $root "weight" .weight) | nindent 4 }}
    {{- else }}
    {{- include "fr.hookAnnotations" (dict "root" $root "weight" .weight) | nindent 4 }}
    {{- end }}
spec:
  backoffLimit: {{ int $job.backoffLimit }}
  activeDeadlineSeconds: {{ int $job.activeDeadlineSeconds }}
  template:
    metadata:
      labels:
        {{- include "fr.hookPodLabels" (dict "root" $root "hook" .hook "action" .action) | nindent 8 }}
    spec:
      restartPolicy: Never
      serviceAccountName: {{ .serviceAccount }}
      automountServiceAccountToken: {{ .automount }}
      enableServiceLinks: false
      securityContext:
        runAsNonRoot: true
        runAsUser: {{ int $job.runAsUser }}
        runAsGroup: {{ int $job.runAsUser }}
        seccompProfile:
          type: RuntimeDefault
      containers:
        - name: hook
          image: {{ printf "%s:%s" $hooks.image.repository $hooks.image.tag | toJson }}
          imagePullPolicy: {{ $hooks.image.pullPolicy }}
          command: ["devstack", "hook", {{ .hook | toJson }}, {{ .action | toJson }}]
          env:
            {{- toYaml .env | nindent 12 }}
          resources:
            {{- toYaml $job.resources | nindent 12 }}
          securityContext:
            allowPrivilegeEscalation: false
            readOnlyRootFilesystem: true
            runAsNonRoot: true
            privileged: false
            capabilities:
              drop:
                - ALL
            seccompProfile:
              type: RuntimeDefault
          volumeMounts:
            - name: tmp
              mountPath: /tmp
      volumes:
        - name: tmp
          emptyDir:
            sizeLimit: 16Mi
{{- end }}

{{/*
What the service's container gets from its hooks, as envFrom: the copied Secrets first, then the
outputs of postgres (Secret), sqs and sns (ConfigMaps), so devstack's outputs win over a copy; the
container's own env wins over all of them (Kubernetes' rule).
*/}}
{{- define "fr.hookEnvFrom" -}}
{{- $hooks := .Values.hooks | default dict -}}
{{- $from := list -}}
{{- with get $hooks "secrets" -}}
{{- range .names -}}
{{- $from = append $from (dict "secretRef" (dict "name" .)) -}}
{{- end -}}
{{- end -}}
{{- if get $hooks "postgres" -}}
{{- $from = append $from (dict "secretRef" (dict "name" (include "fr.hookOutput" (dict "root" $ "hook" "postgres")))) -}}
{{- end -}}
{{- range $kind := list "sqs" "sns" -}}
{{- if get $hooks $kind -}}
{{- $from = append $from (dict "configMapRef" (dict "name" (include "fr.hookOutput" (dict "root" $ "hook" $kind)))) -}}
{{- end -}}
{{- end -}}
{{- if $from -}}
{{- toYaml $from -}}
{{- end -}}
{{- end }}

{{/* Plain env the hooks give the service: REDIS_URL when it has a Redis. */}}
{{- define "fr.hookEnv" -}}
{{- $hooks := .Values.hooks | default dict -}}
{{- if get $hooks "redis" -}}
{{- toYaml (dict "REDIS_URL" (printf "redis://%s:6379/0" (include "fr.redisName" .))) -}}
{{- end -}}
{{- end }}

{{/*
A checksum of what the hooks give the service: a change (another queue, another database server)
rolls its Pods, which read envFrom only when they start.
*/}}
{{- define "fr.hookChecksum" -}}
{{- $hooks := .Values.hooks | default dict -}}
{{- $given := pick $hooks "secrets" "postgres" "sqs" "sns" "aws" "redis" -}}
{{- if $given -}}
{{- toJson $given | sha256sum -}}
{{- end -}}
{{- end }}
