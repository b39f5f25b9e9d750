{{/* The RayCluster spec of the training RayJob, the tuning RayJob and the RayService. */}}

{{/*
One head group and one worker group (`gpu`, or `cpu` when workers.gpusPerPod is 0). Call with
(dict "root" $ "autoscaling" bool "replicas" n "minReplicas" n "maxReplicas" n "servePort" port-or-0
"upscalingMode" mode "idleTimeoutSeconds" n "autoscalerResources" map); the last three matter
only with autoscaling.
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
