"""What the training tests share: a small model for the runs whose subject is not the model
(resume, failures, bad images, manifests, schedules). The digits_run fixture keeps
configs/digits.yaml's ResNet-18: it is what `make demo` trains."""

from __future__ import annotations

# timm's test_resnet: 0.37 M weights, about 9x ResNet-18's training speed at 32 px on a CPU core,
# and 0.98 val/top1 on the digits in configs/digits.yaml's 6 epochs (measured)
SMALL_MODEL = "model.name=test_resnet"
