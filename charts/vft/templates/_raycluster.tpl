{{/* The RayCluster spec of the training RayJob, the tuning RayJob and the RayService. */}}

{{/*
One head group and the worker groups: the main one (`gpu`, or `cpu` when workers.gpusPerPod is 0)
and workers.additionalGroups. Call with (dict "root" $ "autoscaling" bool "replicas" n
"minReplicas" n "maxReplicas" n "servePort" port-or-0 "upscalingMode" mode "idleTimeoutSeconds" n
"autoscalerResources" map); the last three matter only with autoscaling.
*/}}
{{- define "vft.rayClusterSpec" -}}
{{- $root := .root }}
{{- $v := $root.Values }}
{{- $gpus := int $v.workers.gpusPerPod -}}
rayVersion: {{ $v.rayVersion | quote }}
authOptions:
  mode: token
{{- with $v.gcsFaultTolerance }}
{{- if .enabled }}
{{- if ne $v.workload "serve" }}
{{- fail (printf "gcsFaultTolerance.enabled: for workload serve (a RayService); a %s job resumes from its checkpoints instead" $v.workload) }}
{{- end }}
{{- if not .redisAddress }}
{{- fail "gcsFaultTolerance.redisAddress: GCS fault tolerance needs the host:port of a Redis" }}
{{- end }}
gcsFaultToleranceOptions:
  redisAddress: {{ .redisAddress | quote }}
  {{- if .redisPasswordSecret.name }}
  redisPassword:
    valueFrom:
      secretKeyRef:
        name: {{ .redisPasswordSecret.name }}
        key: {{ .redisPasswordSecret.key }}
  {{- end }}
{{- end }}
{{- end }}
{{- if .autoscaling }}
enableInTreeAutoscaling: true
autoscalerOptions:
  upscalingMode: {{ .upscalingMode }}
  idleTimeoutSeconds: {{ .idleTimeoutSeconds }}
  imagePullPolicy: {{ $v.image.pullPolicy }}
  resources:
    {{- toYaml .autoscalerResources | nindent 4 }}
  securityContext:
    {{- include "vft.containerSecurityContext" $root | nindent 4 }}
{{- end }}
headGroupSpec:
  serviceType: ClusterIP
  rayStartParams:
    {{- toYaml (merge (dict "dashboard-host" "0.0.0.0") $v.head.rayStartParams) | nindent 4 }}
  template:
    metadata:
      labels:
        {{- include "vft.labels" $root | nindent 8 }}
        app.kubernetes.io/component: ray-head
      {{- with $v.podAnnotations }}
      annotations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
    spec:
      serviceAccountName: {{ include "vft.serviceAccountName" $root }}
      {{- /* The autoscaler sidecar calls the Kubernetes API with this account's token; KubeRay
      binds its autoscaler Role to the account the head names. */}}
      automountServiceAccountToken: {{ .autoscaling }}
      securityContext:
        {{- include "vft.podSecurityContext" $root | nindent 8 }}
      {{- with $v.imagePullSecrets }}
      imagePullSecrets:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with include "vft.groupPodSpec" $v.head }}
      {{- . | trim | nindent 6 }}
      {{- end }}
      containers:
        - name: ray-head
          image: {{ include "vft.image" $root }}
          imagePullPolicy: {{ $v.image.pullPolicy }}
          ports:
            - name: gcs-server
              containerPort: 6379
            - name: dashboard
              containerPort: 8265
            - name: client
              containerPort: 10001
            {{- /* scraped by the head's PodMonitor (KubeRay's port names) */}}
            - name: metrics
              containerPort: 8080
            - name: as-metrics
              containerPort: 44217
            - name: dash-metrics
              containerPort: 44227
            {{- if .servePort }}
            - name: serve
              containerPort: {{ .servePort }}
            {{- end }}
          {{- with include "vft.containerEnv" (dict "root" $root "group" $v.head) }}
          {{- . | trim | nindent 10 }}
          {{- end }}
          resources:
            {{- toYaml $v.head.resources | nindent 12 }}
          securityContext:
            {{- include "vft.containerSecurityContext" $root | nindent 12 }}
          volumeMounts:
            {{- include "vft.volumeMounts" $root | nindent 12 }}
            {{- with $v.head.extraVolumeMounts }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
      volumes:
        {{- include "vft.volumes" (dict "root" $root "shmSize" $v.head.shmSize) | nindent 8 }}
        {{- with $v.head.extraVolumes }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
workerGroupSpecs:
  {{- $main := omit (deepCopy $v.workers) "additionalGroups" }}
  {{- $_ := set $main "name" (ternary "gpu" "cpu" (gt $gpus 0)) }}
  {{- range $key := list "replicas" "minReplicas" "maxReplicas" }}
  {{- $_ := set $main $key (get $ $key) }}
  {{- end }}
  {{- include "vft.workerGroup" (merge (dict "group" $main) .) | nindent 2 }}
  {{- range $v.workers.additionalGroups }}
  {{- /* the group's own settings win, empty ones included (gpusPerPod: 0, tolerations: []) */}}
  {{- $group := omit (deepCopy $v.workers) "additionalGroups" }}
  {{- range $key, $value := . }}
  {{- $_ := set $group $key $value }}
  {{- end }}
  {{- $replicas := int (get . "replicas" | default 0) }}
  {{- $_ := set $group "replicas" $replicas }}
  {{- $_ := set $group "minReplicas" (ternary (get . "minReplicas") $replicas (hasKey . "minReplicas")) }}
  {{- $_ := set $group "maxReplicas" (ternary (get . "maxReplicas") $replicas (hasKey . "maxReplicas")) }}
  {{- include "vft.workerGroup" (merge (dict "group" $group) $) | nindent 2 }}
  {{- end }}
{{- end }}

{{/*
One worker group: the rayClusterSpec's arguments plus "group", the workers' values merged with
the group's own (name, replicas, minReplicas, maxReplicas, gpusPerPod, resources, ...).
*/}}
{{- define "vft.workerGroup" -}}
{{- $root := .root }}
{{- $v := $root.Values }}
{{- $g := .group }}
{{- $gpus := int $g.gpusPerPod -}}
- groupName: {{ $g.name }}
  replicas: {{ $g.replicas }}
  minReplicas: {{ $g.minReplicas }}
  maxReplicas: {{ $g.maxReplicas }}
  {{- if .autoscaling }}
  idleTimeoutSeconds: {{ .idleTimeoutSeconds }}
  {{- end }}
  rayStartParams: {{ toJson $g.rayStartParams }}
  template:
    metadata:
      labels:
        {{- include "vft.labels" $root | nindent 8 }}
        app.kubernetes.io/component: ray-worker
      {{- with $v.podAnnotations }}
      annotations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
    spec:
      serviceAccountName: {{ include "vft.serviceAccountName" $root }}
      automountServiceAccountToken: false
      securityContext:
        {{- include "vft.podSecurityContext" $root | nindent 8 }}
      {{- with $v.imagePullSecrets }}
      imagePullSecrets:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with include "vft.groupPodSpec" $g }}
      {{- . | trim | nindent 6 }}
      {{- end }}
      containers:
        - name: ray-worker
          image: {{ include "vft.image" $root }}
          imagePullPolicy: {{ $v.image.pullPolicy }}
          ports:
            - name: metrics
              containerPort: 8080
            {{- if .servePort }}
            - name: serve
              containerPort: {{ .servePort }}
            {{- end }}
          {{- with include "vft.containerEnv" (dict "root" $root "group" $g) }}
          {{- . | trim | nindent 10 }}
          {{- end }}
          resources:
            {{- $extra := deepCopy ($g.extraResources | default dict) }}
            {{- if gt $gpus 0 }}
            {{- $_ := set $extra "nvidia.com/gpu" $gpus }}
            {{- end }}
            {{- $res := deepCopy $g.resources }}
            {{- $_ := set $res "limits" (merge (deepCopy $extra) $res.limits) }}
            {{- $_ := set $res "requests" (merge (deepCopy $extra) $res.requests) }}
            {{- toYaml $res | nindent 12 }}
          securityContext:
            {{- include "vft.containerSecurityContext" $root | nindent 12 }}
          volumeMounts:
            {{- include "vft.volumeMounts" $root | nindent 12 }}
            {{- with $g.extraVolumeMounts }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
      volumes:
        {{- include "vft.volumes" (dict "root" $root "shmSize" $g.shmSize) | nindent 8 }}
        {{- with $g.extraVolumes }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
{{- end }}
