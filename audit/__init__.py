"""The auditor's tools (审计): replay, verify, timelines, rule checks, checkpoints, exports."""
