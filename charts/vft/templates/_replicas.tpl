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
The CPUs Ray sees in a worker pod: `num-cpus` from workers.rayStartParams, else (as KubeRay sets
it) the container's CPU limit, else its request; a Kubernetes quantity ("8", "7500m").
*/}}
{{- define "vft.workerCpus" -}}
{{- $w := .Values.workers }}
{{- $cpu := get $w.rayStartParams "num-cpus" | default $w.resources.limits.cpu | default $w.resources.requests.cpu | toString }}
{{- if hasSuffix "m" $cpu }}
{{- divf (trimSuffix "m" $cpu | float64) 1000.0 }}
{{- else }}
{{- float64 $cpu }}
{{- end }}
{{- end }}

{{/*
Serve replicas one worker pod holds: as many as both its GPUs and its CPUs fit. Fails, with the
numbers, when not even one fits.
*/}}
{{- define "vft.replicasPerPod" -}}
{{- $s := .Values.serve }}
{{- $gpus := float64 .Values.workers.gpusPerPod }}
{{- $cpus := include "vft.workerCpus" . | float64 }}
{{- $byCpu := floor (divf $cpus $s.cpusPerReplica) | int }}
{{- $perPod := $byCpu }}
{{- if gt (float64 $s.gpusPerReplica) 0.0 }}
{{- $perPod = min $byCpu (floor (divf $gpus $s.gpusPerReplica) | int) }}
{{- end }}
{{- if lt $perPod 1 }}
{{- fail (printf "serve.cpusPerReplica: a replica needs %v CPUs and %v GPUs; a worker pod has %v CPUs (workers.resources.limits.cpu or workers.rayStartParams.num-cpus) and %v GPUs (workers.gpusPerPod)"
    $s.cpusPerReplica $s.gpusPerReplica $cpus $gpus) }}
{{- end }}
{{- $perPod }}
{{- end }}

{{/*
Serve worker pods for N replicas. Call with (dict "replicas" n "perPod" n).
*/}}
{{- define "vft.servePods" -}}
{{- $n := int .replicas }}
{{- div (add $n .perPod -1) .perPod }}
{{- end }}
