{{/* The run: its name, where it is stored, the model it serves, and its command's overrides. */}}

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

{{/*
What a RayService serves: `serve.modelUri` (an object store URI, a path on the claim, or a
registered model's `models:/` URI), else the run's own directory.
*/}}
{{- define "vft.modelUri" -}}
{{- $uri := .Values.serve.modelUri }}
{{- if not $uri }}
{{- printf "%s/%s" (include "vft.runStorage" .) (include "vft.runName" .) }}
{{- else if hasPrefix "models:/" $uri }}
{{- if not .Values.tracking.uri }}
{{- fail (printf "serve.modelUri: %s is a registered model; set tracking.uri to its MLflow server" $uri) }}
{{- end }}
{{- $uri }}
{{- else if or (hasPrefix "s3://" $uri) (hasPrefix "gs://" $uri) }}
{{- $uri }}
{{- else if not .Values.storage.claimName }}
{{- fail (printf "serve.modelUri: %s is a path on the storage claim, but storage.claimName is empty" $uri) }}
{{- else }}
{{- $uri }}
{{- end }}
{{- end }}

{{/*
`scaling.*` overrides that make the config agree with the worker group: one Ray Train worker
per GPU (or per CPU pod when gpusPerPod is 0). Call with (dict "root" $ "workers" n).
*/}}
{{- define "vft.scalingOverrides" -}}
{{- $gpus := int .root.Values.workers.gpusPerPod }}
{{- if gt $gpus 0 -}}
scaling.num_workers={{ .workers }} scaling.use_gpu=true scaling.gpus_per_worker=1
{{- else -}}
scaling.num_workers={{ .workers }} scaling.use_gpu=false
{{- end }}
{{- end }}

{{/*
`run.overrides`, each after a space.
*/}}
{{- define "vft.userOverrides" -}}
{{- range .Values.run.overrides }} {{ . }}{{ end }}
{{- end }}
