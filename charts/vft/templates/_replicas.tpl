{{/* Worker pod counts of the autoscaling clusters: a tune's most, and a RayService's. */}}

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
{{- $msg := printf "tune.maxReplicas: %d worker pods cannot run tune.maxConcurrentTrials=%d trials"
    (int $t.maxReplicas) (int $t.maxConcurrentTrials) }}
{{- fail (printf "%s of %d workers (%d GPUs per pod); need >= %d"
    $msg (int $t.workersPerTrial) $gpus (int $need)) }}
{{- else }}
{{- int $t.maxReplicas }}
{{- end }}
{{- end }}

{{/*
Serve worker pods for N replicas: as many replicas per pod as its GPUs hold (one per pod for
CPU replicas). Call with (dict "replicas" n "gpusPerPod" n "gpusPerReplica" x).
*/}}
{{- define "vft.servePods" -}}
{{- $n := int .replicas }}
{{- $perPod := 1 }}
{{- if gt (float64 .gpusPerReplica) 0.0 }}
{{- $perPod = max 1 (floor (divf .gpusPerPod .gpusPerReplica)) | int }}
{{- end }}
{{- div (add $n $perPod -1) $perPod }}
{{- end }}
