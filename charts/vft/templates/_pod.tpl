{{/* Pieces of the Ray pods: security contexts, storage env, volumes, the submitter pod. */}}

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
