{{/* The ConfigMap's files: the vft config and the tune search space, as YAML text. */}}

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
{{- $concurrency := dict "max_concurrent_trials" (int .Values.tune.maxConcurrentTrials) }}
{{- $space = merge $concurrency (omit $space "max_concurrent_trials") }}
{{- toYaml $space }}
{{- end }}
