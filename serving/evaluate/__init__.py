"""`vft eval`: where does the model break before it ships?

For the best checkpoint (backend `torch`) or an export (`onnx`, `int8`, `tensorrt`), on one or
more datasets (domains): the task's metrics per domain and the worst domain; on the first
domain, the corruption suite (the task's metric per corruption and severity, the mean
corruption error and the relative drop from clean) and, where the task allows attacks
(classification), adversarial accuracy per eps (FGSM and PGD, L-inf, crafted with gradients of
the PyTorch checkpoint and scored on the chosen backend). Written to RUN_DIR/eval/<name>/:
report.json, report.md and PNG plots (`pipeline.evaluate_run`)."""
