{{/* Worker pod counts: a tune's most, a RayService's; what a worker pod holds. */}}

{{/*
`scaling.cpus_per_worker` as the job will see it: from run.overrides, else the config, else 1.
*/}}
{{- define "vft.cpusPerWorker" -}}
{{- $scaling := get (include "vft.configText" . | fromYaml) "scaling" | default dict }}
{{- $cpus := get $scaling "cpus_per_worker" | default 1.0 }}
{{- range .Values.run.overrides }}
{{- if hasPrefix "scaling.cpus_per_worker=" . }}{{ $cpus = trimPrefix "scaling.cpus_per_worker=" . }}{{ end }}
{{- end }}
{{- float64 $cpus }}
{{- end }}

{{/*
Worker pods a tune needs at most: enough for maxConcurrentTrials trials' GPUs (workersPerTrial
each, gpusPerPod per pod) and CPUs (each trial's driver, 1, plus workersPerTrial x
scaling.cpus_per_worker; the head schedules none).
*/}}
{{- define "vft.tuneMaxReplicas" -}}
{{- $t := .Values.tune }}
{{- $workers := mul (int $t.maxConcurrentTrials) (int $t.workersPerTrial) }}
{{- $gpus := int .Values.workers.gpusPerPod }}
{{- $byGpu := ternary $workers (div (add $workers $gpus -1) (max $gpus 1)) (eq $gpus 0) }}
{{- $podCpus := include "vft.workerCpus" . | float64 }}
{{- $perWorker := include "vft.cpusPerWorker" . | float64 }}
{{- if gt $perWorker $podCpus }}
{{- fail (printf "scaling.cpus_per_worker: %v CPUs per Train worker do not fit a worker pod's %v CPUs" $perWorker $podCpus) }}
{{- end }}
{{- $trialCpus := addf 1.0 (mulf (int $t.workersPerTrial) $perWorker) }}
{{- $byCpu := ceil (divf (mulf (int $t.maxConcurrentTrials) $trialCpus) $podCpus) | int }}
{{- $need := max $byGpu $byCpu }}
{{- if kindIs "invalid" $t.maxReplicas }}
{{- $need }}
{{- else if lt (int $t.maxReplicas) (int $need) }}
{{- $msg := printf "tune.maxReplicas: %d worker pods cannot run tune.maxConcurrentTrials=%d trials"
    (int $t.maxReplicas) (int $t.maxConcurrentTrials) }}
{{- fail (printf "%s of %d workers (%d GPUs and %v CPUs per pod, %v CPUs per trial); need >= %d"
    $msg (int $t.workersPerTrial) $gpus $podCpus $trialCpus (int $need)) }}
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
