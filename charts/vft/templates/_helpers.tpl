{{/*
Chart name, truncated for label values.
*/}}
{{- define "vft.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name of the release's objects. KubeRay derives pod and service names from RayJob and
RayService names, so it is kept to 40 characters.
*/}}
{{- define "vft.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "vft.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "vft.selectorLabels" -}}
app.kubernetes.io/name: {{ include "vft.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "vft.labels" -}}
helm.sh/chart: {{ include "vft.chart" . }}
{{ include "vft.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: vft
vft/workload: {{ .Values.workload }}
{{- with .Values.labels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "vft.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "vft.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "vft.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/*
The run's name (RUN_DIR = <run storage>/<run name>); it travels through a shell twice (the
submitter's and the job's), so the schema limits it to [A-Za-z0-9._-].
*/}}
{{- define "vft.runName" -}}
{{- default .Release.Name .Values.run.name }}
{{- end }}

{{/*
`run.storage` as the pods see it: a path on the claim, or the object store URI.
*/}}
{{- define "vft.runStorage" -}}
{{- $s := .Values.storage }}
{{- if eq $s.type "pvc" }}
{{- if not $s.claimName }}
{{- fail "storage.claimName: storage.type pvc needs an existing ReadWriteMany claim" }}
{{- end }}
{{- printf "%s/%s" (trimSuffix "/" $s.mountPath) (trimPrefix "/" $s.runsPath) }}
{{- else }}
{{- $scheme := ternary "s3://" "gs://" (eq $s.type "s3") }}
{{- if not (hasPrefix $scheme $s.uri) }}
{{- fail (printf "storage.uri: storage.type %s needs a %s URI, got %q" $s.type $scheme $s.uri) }}
{{- end }}
{{- trimSuffix "/" $s.uri }}
{{- end }}
{{- end }}

{{- define "vft.modelUri" -}}
{{- default (printf "%s/%s" (include "vft.runStorage" .) (include "vft.runName" .)) .Values.serve.modelUri }}
{{- end }}

{{/*
The vft config file's text, from `configFile` (verbatim) or `config`.
*/}}
{{- define "vft.configText" -}}
{{- if .Values.configFile }}
{{- $parsed := fromYaml .Values.configFile }}
{{- if or (hasKey $parsed "Error") (not $parsed) }}
{{- fail "configFile: not a YAML mapping of config sections" }}
{{- end }}
{{- .Values.configFile }}
{{- else }}
{{- toYaml .Values.config }}
{{- end }}
{{- end }}

{{/*
The search space file's text, with `max_concurrent_trials` from tune.maxConcurrentTrials.
*/}}
{{- define "vft.spaceText" -}}
{{- $space := .Values.tune.space }}
{{- if .Values.tune.spaceFile }}
{{- $space = fromYaml .Values.tune.spaceFile }}
{{- if or (hasKey $space "Error") (not $space) }}
{{- fail "tune.spaceFile: not a YAML mapping" }}
{{- end }}
{{- end }}
{{- $space = merge (dict "max_concurrent_trials" (int .Values.tune.maxConcurrentTrials)) (omit $space "max_concurrent_trials") }}
{{- toYaml $space }}
{{- end }}

{{/*
Worker pods a tune needs at most: maxConcurrentTrials x workersPerTrial GPUs, gpusPerPod per pod.
*/}}
{{- define "vft.tuneMaxReplicas" -}}
{{- $t := .Values.tune }}
{{- $workers := mul (int $t.maxConcurrentTrials) (int $t.workersPerTrial) }}
{{- $gpus := int .Values.workers.gpusPerPod }}
{{- $need := ternary $workers (div (add $workers $gpus -1) (max $gpus 1)) (eq $gpus 0) }}
{{- if kindIs "invalid" $t.maxReplicas }}
{{- $need }}
{{- else if lt (int $t.maxReplicas) (int $need) }}
{{- fail (printf "tune.maxReplicas: %d worker pods cannot run tune.maxConcurrentTrials=%d trials of %d workers (%d GPUs per pod); need >= %d" (int $t.maxReplicas) (int $t.maxConcurrentTrials) (int $t.workersPerTrial) $gpus (int $need)) }}
{{- else }}
{{- int $t.maxReplicas }}
{{- end }}
{{- end }}

{{/*
Serve worker pods for N replicas: as many replicas per pod as its GPUs hold (one per pod for
CPU replicas).
*/}}
{{- define "vft.servePods" -}}
{{- $n := int .replicas }}
{{- $perPod := 1 }}
{{- if gt (float64 .gpusPerReplica) 0.0 }}
{{- $perPod = max 1 (floor (divf .gpusPerPod .gpusPerReplica)) | int }}
{{- end }}
{{- div (add $n $perPod -1) $perPod }}
{{- end }}

{{- define "vft.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 1000
runAsGroup: 100
fsGroup: 100
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- define "vft.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: 1000
allowPrivilegeEscalation: false
privileged: false
capabilities:
  drop:
    - ALL
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/*
Storage credentials and settings for the Ray containers.
*/}}
{{- define "vft.storageEnv" -}}
{{- $s := .Values.storage }}
{{- if eq $s.type "s3" }}
{{- with $s.s3.region }}
- name: AWS_DEFAULT_REGION
  value: {{ . | quote }}
{{- end }}
{{- with $s.s3.endpointUrl }}
- name: AWS_ENDPOINT_URL
  value: {{ . | quote }}
{{- end }}
{{- with $s.credentialsSecret }}
- name: AWS_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: AWS_ACCESS_KEY_ID
- name: AWS_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: AWS_SECRET_ACCESS_KEY
- name: AWS_SESSION_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: AWS_SESSION_TOKEN
      optional: true
{{- end }}
{{- else if and (eq $s.type "gcs") $s.credentialsSecret }}
- name: GOOGLE_APPLICATION_CREDENTIALS
  value: /var/run/secrets/vft-gcs/key.json
{{- end }}
{{- end }}

{{- define "vft.volumeMounts" -}}
- name: config
  mountPath: /config
  readOnly: true
- name: dshm
  mountPath: /dev/shm
{{- if .Values.storage.claimName }}
- name: storage
  mountPath: {{ .Values.storage.mountPath }}
{{- end }}
{{- if and (eq .Values.storage.type "gcs") .Values.storage.credentialsSecret }}
- name: gcs-credentials
  mountPath: /var/run/secrets/vft-gcs
  readOnly: true
{{- end }}
{{- end }}

{{/*
Pod volumes; call with (dict "root" $ "shmSize" size).
*/}}
{{- define "vft.volumes" -}}
{{- $v := .root.Values -}}
- name: config
  configMap:
    name: {{ include "vft.fullname" .root }}
- name: dshm
  emptyDir:
    medium: Memory
    sizeLimit: {{ .shmSize }}
{{- if $v.storage.claimName }}
- name: storage
  persistentVolumeClaim:
    claimName: {{ $v.storage.claimName }}
{{- end }}
{{- if and (eq $v.storage.type "gcs") $v.storage.credentialsSecret }}
- name: gcs-credentials
  secret:
    secretName: {{ $v.storage.credentialsSecret }}
{{- end }}
{{- end }}

{{/*
The RayCluster spec shared by the training RayJob, the tuning RayJob and the RayService.
Call with (dict "root" $ "autoscaling" bool "autoscalerResources" map "replicas" n "minReplicas" n
"maxReplicas" n "servePort" port-or-0).
*/}}
{{- define "vft.rayClusterSpec" -}}
{{- $root := .root }}
{{- $v := $root.Values }}
{{- $gpus := int $v.workers.gpusPerPod -}}
rayVersion: {{ $v.rayVersion | quote }}
authOptions:
  mode: token
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
      {{- if not .autoscaling }}
      {{- /* The autoscaler sidecar needs the API token KubeRay's own ServiceAccount grants it. */}}
      serviceAccountName: {{ include "vft.serviceAccountName" $root }}
      automountServiceAccountToken: false
      {{- end }}
      securityContext:
        {{- include "vft.podSecurityContext" $root | nindent 8 }}
      {{- with $v.imagePullSecrets }}
      imagePullSecrets:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $v.head.nodeSelector }}
      nodeSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $v.head.tolerations }}
      tolerations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $v.head.affinity }}
      affinity:
        {{- toYaml . | nindent 8 }}
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
            {{- if .servePort }}
            - name: serve
              containerPort: {{ .servePort }}
            {{- end }}
          {{- with include "vft.storageEnv" $root }}
          env:
            {{- . | nindent 12 }}
          {{- end }}
          resources:
            {{- toYaml $v.head.resources | nindent 12 }}
          securityContext:
            {{- include "vft.containerSecurityContext" $root | nindent 12 }}
          volumeMounts:
            {{- include "vft.volumeMounts" $root | nindent 12 }}
      volumes:
        {{- include "vft.volumes" (dict "root" $root "shmSize" $v.head.shmSize) | nindent 8 }}
workerGroupSpecs:
  - groupName: {{ ternary "gpu" "cpu" (gt $gpus 0) }}
    replicas: {{ .replicas }}
    minReplicas: {{ .minReplicas }}
    maxReplicas: {{ .maxReplicas }}
    {{- if .autoscaling }}
    idleTimeoutSeconds: {{ .idleTimeoutSeconds }}
    {{- end }}
    rayStartParams: {{ toJson $v.workers.rayStartParams }}
    template:
      metadata:
        labels:
          {{- include "vft.labels" $root | nindent 10 }}
          app.kubernetes.io/component: ray-worker
        {{- with $v.podAnnotations }}
        annotations:
          {{- toYaml . | nindent 10 }}
        {{- end }}
      spec:
        serviceAccountName: {{ include "vft.serviceAccountName" $root }}
        automountServiceAccountToken: false
        securityContext:
          {{- include "vft.podSecurityContext" $root | nindent 10 }}
        {{- with $v.imagePullSecrets }}
        imagePullSecrets:
          {{- toYaml . | nindent 10 }}
        {{- end }}
        {{- with $v.workers.nodeSelector }}
        nodeSelector:
          {{- toYaml . | nindent 10 }}
        {{- end }}
        {{- with $v.workers.tolerations }}
        tolerations:
          {{- toYaml . | nindent 10 }}
        {{- end }}
        {{- with $v.workers.affinity }}
        affinity:
          {{- toYaml . | nindent 10 }}
        {{- end }}
        containers:
          - name: ray-worker
            image: {{ include "vft.image" $root }}
            imagePullPolicy: {{ $v.image.pullPolicy }}
            {{- if .servePort }}
            ports:
              - name: serve
                containerPort: {{ .servePort }}
            {{- end }}
            {{- with include "vft.storageEnv" $root }}
            env:
              {{- . | nindent 14 }}
            {{- end }}
            resources:
              {{- $res := deepCopy $v.workers.resources }}
              {{- if gt $gpus 0 }}
              {{- $_ := set $res "limits" (merge (dict "nvidia.com/gpu" $gpus) $res.limits) }}
              {{- $_ := set $res "requests" (merge (dict "nvidia.com/gpu" $gpus) $res.requests) }}
              {{- end }}
              {{- toYaml $res | nindent 14 }}
            securityContext:
              {{- include "vft.containerSecurityContext" $root | nindent 14 }}
            volumeMounts:
              {{- include "vft.volumeMounts" $root | nindent 14 }}
        volumes:
          {{- include "vft.volumes" (dict "root" $root "shmSize" $v.workers.shmSize) | nindent 10 }}
{{- end }}

{{/*
The submitter pod of a RayJob: KubeRay fills in the `ray job submit` command and the token.
*/}}
{{- define "vft.submitterPodTemplate" -}}
metadata:
  labels:
    {{- include "vft.labels" . | nindent 4 }}
    app.kubernetes.io/component: ray-job-submitter
spec:
  restartPolicy: Never
  serviceAccountName: {{ include "vft.serviceAccountName" . }}
  automountServiceAccountToken: false
  securityContext:
    {{- include "vft.podSecurityContext" . | nindent 4 }}
  {{- with .Values.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  containers:
    - name: ray-job-submitter
      image: {{ include "vft.image" . }}
      imagePullPolicy: {{ .Values.image.pullPolicy }}
      resources:
        {{- toYaml .Values.job.submitterResources | nindent 8 }}
      securityContext:
        {{- include "vft.containerSecurityContext" . | nindent 8 }}
{{- end }}

{{/*
`scaling.*` overrides that make the config agree with the worker group: one Ray Train worker
per GPU (or per CPU pod when gpusPerPod is 0).
*/}}
{{- define "vft.scalingOverrides" -}}
{{- $gpus := int .root.Values.workers.gpusPerPod }}
{{- if gt $gpus 0 -}}
scaling.num_workers={{ .workers }} scaling.use_gpu=true scaling.gpus_per_worker=1
{{- else -}}
scaling.num_workers={{ .workers }} scaling.use_gpu=false
{{- end }}
{{- end }}

{{- define "vft.userOverrides" -}}
{{- range .Values.run.overrides }} {{ . }}{{ end }}
{{- end }}
