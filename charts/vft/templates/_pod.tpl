{{/* Pieces of the Ray pods: security contexts, storage env, volumes, a group's own settings, the
submitter pod. */}}

{{/*
Security contexts of every Ray pod and container: non-root, no privilege escalation or capabilities.
*/}}
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
The datasets' locations, space-separated: `data.train` and `data.val` from the config, then
from run.overrides (which win when the job runs).
*/}}
{{- define "vft.dataLocations" -}}
{{- $data := get (include "vft.configText" . | fromYaml) "data" | default dict }}
{{- $locations := list (get $data "train" | default "" | toString) (get $data "val" | default "" | toString) }}
{{- range .Values.run.overrides }}
{{- if or (hasPrefix "data.train=" .) (hasPrefix "data.val=" .) }}
{{- $locations = append $locations (splitn "=" 2 .)._1 }}
{{- end }}
{{- end }}
{{- $locations | join " " }}
{{- end }}

{{/*
The object stores the pods read or write, comma-separated (`s3`, `gcs`): the run storage's and
the datasets'.
*/}}
{{- define "vft.objectStores" -}}
{{- $stores := list }}
{{- if ne .Values.storage.type "pvc" }}
{{- $stores = append $stores .Values.storage.type }}
{{- end }}
{{- range splitList " " (include "vft.dataLocations" .) }}
{{- if hasPrefix "s3://" . }}{{ $stores = append $stores "s3" }}{{ end }}
{{- if hasPrefix "gs://" . }}{{ $stores = append $stores "gcs" }}{{ end }}
{{- end }}
{{- $stores | uniq | join "," }}
{{- end }}

{{/*
"true" when a dataset is read from object storage: each pod then keeps its copy in the
`data-cache` volume.
*/}}
{{- define "vft.remoteData" -}}
{{- range splitList " " (include "vft.dataLocations" .) }}
{{- if or (hasPrefix "s3://" .) (hasPrefix "gs://" .) }}true{{ end }}
{{- end }}
{{- end }}

{{/*
Object-store credentials and settings for the Ray containers: for the run storage and for
datasets in object storage alike (one Secret, `storage.credentialsSecret`).
*/}}
{{- define "vft.storageEnv" -}}
{{- $s := .Values.storage }}
{{- $stores := splitList "," (include "vft.objectStores" .) }}
{{- if has "s3" $stores }}
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
{{- end }}
{{- if and (has "gcs" $stores) $s.credentialsSecret }}
- name: GOOGLE_APPLICATION_CREDENTIALS
  value: /var/run/secrets/vft-gcs/key.json
{{- end }}
{{- if include "vft.remoteData" . }}
- name: VFT_DATA_CACHE
  value: /var/cache/vft/datasets
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
{{- if and (has "gcs" (splitList "," (include "vft.objectStores" .))) .Values.storage.credentialsSecret }}
- name: gcs-credentials
  mountPath: /var/run/secrets/vft-gcs
  readOnly: true
{{- end }}
{{- if include "vft.remoteData" . }}
- name: data-cache
  mountPath: /var/cache/vft/datasets
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
{{- if and (has "gcs" (splitList "," (include "vft.objectStores" .root))) $v.storage.credentialsSecret }}
- name: gcs-credentials
  secret:
    secretName: {{ $v.storage.credentialsSecret }}
{{- end }}
{{- if include "vft.remoteData" .root }}
- name: data-cache
  emptyDir:
    sizeLimit: {{ $v.storage.dataCacheSize }}
{{- end }}
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
      image: {{ .Values.job.submitterImage | default (printf "rayproject/ray:%s" .Values.rayVersion) }}
      imagePullPolicy: {{ .Values.image.pullPolicy }}
      resources:
        {{- toYaml .Values.job.submitterResources | nindent 8 }}
      securityContext:
        {{- include "vft.containerSecurityContext" . | nindent 8 }}
{{- end }}

{{/*
A group's pod settings (the head's, the workers', an additional group's), passed through.
*/}}
{{- define "vft.groupPodSpec" -}}
{{- with .nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .topologySpreadConstraints }}
topologySpreadConstraints:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .runtimeClassName }}
runtimeClassName: {{ . }}
{{- end }}
{{- with .priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- with .initContainers }}
initContainers:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/*
The MLflow tracking server (`tracking.*`) and its credentials from a Secret.
*/}}
{{- define "vft.trackingEnv" -}}
{{- with .Values.tracking.uri }}
- name: MLFLOW_TRACKING_URI
  value: {{ . | quote }}
{{- end }}
{{- with $secret := .Values.tracking.credentialsSecret }}
{{- range $key := list "MLFLOW_TRACKING_USERNAME" "MLFLOW_TRACKING_PASSWORD" "MLFLOW_TRACKING_TOKEN" }}
- name: {{ $key }}
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ $key }}
      optional: true
{{- end }}
{{- end }}
{{- end }}

{{/*
The Ray container's environment: the storage settings and the tracking server, then the group's `env` and `envFrom`.
Call with (dict "root" $ "group" group-values).
*/}}
{{- define "vft.containerEnv" -}}
{{- $storage := printf "%s\n%s" (include "vft.storageEnv" .root) (include "vft.trackingEnv" .root) | trim }}
{{- if or $storage .group.env }}
env:
  {{- with $storage }}
  {{- . | nindent 2 }}
  {{- end }}
  {{- with .group.env }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- end }}
{{- with .group.envFrom }}
envFrom:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}
