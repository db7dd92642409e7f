"""Quantization in PyTorch on real data: observers, QAT recovery, sensitivity, mixed precision.

On a trained ``fmnist_resnet`` (``--trained``, e.g. ``.bench/fmnist_resnet_trained`` from
``benchmarks/train_reference.py``; otherwise trained here), measured on the Fashion-MNIST test
set with the fake-quantized model (the accuracy model of the int8 runtimes):

- int8 static PTQ with each observer (minmax, moving_average, percentile, entropy, mse);
- 3-bit weights, where PTQ loses a visible amount, then QAT for 2 epochs from the PTQ scales.
  Bar: QAT recovers at least half of the PTQ loss;
- per-layer sensitivity at 3 bits, and mixed precision under an accuracy budget: which layers
  stayed float and why. Bar: the budget is met on the test set.

    python benchmarks/quantize_torch.py [--quick] [--out FILE] [--trained FOLDER]
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))

from _bench import emit, parse_args

from slimkit.data import DataConfig, load_dataset
from slimkit.measure import accuracy
from slimkit.models import create_model
from slimkit.quantize import QuantConfig, quantize, sensitivity
from slimkit.serialize import load_model
from slimkit.train import TrainConfig, train

OBSERVERS = ("minmax", "moving_average", "percentile", "entropy", "mse")
LOW_BITS = 3  # 4-bit weights lose under half a point here: too little to recover
QAT_EPOCHS = 2
MIN_RECOVERY = 0.5
BUDGET = 0.01  # mixed precision at 4-bit weights: at most 1 point lost


def main() -> int:
    args = parse_args(__doc__, trained=True)
    threads = os.cpu_count()
    data = load_dataset(
        DataConfig(train_subset=3000, test_subset=1000) if args.quick else DataConfig()
    )
    if args.trained:
        model = load_model(args.trained)
    else:
        model = train(
            create_model("fmnist_resnet"),
            TrainConfig(epochs=1 if args.quick else 8, lr=0.1, augment=False, threads=threads),
            data,
        ).model
    model.eval()

    def test_acc(m) -> float:
        return accuracy(m.eval(), data.test_loader())

    base = test_acc(model)
    rows = [{"what": "float32", "bits": 32, "test_acc": base, "drop_pt": 0.0, "note": ""}]
    calib = 256 if args.quick else 512
    for observer in OBSERVERS:
        q = quantize(model, QuantConfig(observer=observer, calibration_samples=calib), data)
        acc = test_acc(q)
        rows.append({"what": f"int8 PTQ ({observer})", "bits": 8, "test_acc": acc,
                     "drop_pt": (base - acc) * 100, "note": ""})  # fmt: skip

    low = QuantConfig(weight_bits=LOW_BITS, calibration_samples=calib)
    ptq = test_acc(quantize(model, low, data))
    # The reference training's loss (label smoothing 0.1), without augmentation.
    qat_cfg = low.model_copy(update={"method": "qat", "qat": TrainConfig(
        epochs=1 if args.quick else QAT_EPOCHS, lr=0.01, schedule="cosine", weight_decay=0.0,
        label_smoothing=0.1, augment=False, threads=threads)})  # fmt: skip
    qat = test_acc(quantize(model, qat_cfg, data))
    recovery = (qat - ptq) / (base - ptq) if base > ptq else float("nan")
    rows.append({"what": f"{LOW_BITS}-bit weights PTQ", "bits": LOW_BITS, "test_acc": ptq,
                 "drop_pt": (base - ptq) * 100, "note": ""})  # fmt: skip
    rows.append({"what": f"{LOW_BITS}-bit weights QAT ({QAT_EPOCHS} epochs)", "bits": LOW_BITS,
                 "test_acc": qat, "drop_pt": (base - qat) * 100,
                 "note": f"recovers {recovery:.0%} of the PTQ loss"})  # fmt: skip

    for row in sensitivity(model, low, data):
        rows.append({"what": f"sensitivity {row.layer}", "bits": LOW_BITS, "test_acc": "",
                     "drop_pt": row.accuracy_drop * 100,
                     "note": f"output MSE {row.output_mse:.3g} (held-out train)"})  # fmt: skip
    mixed = quantize(model, low.model_copy(update={"accuracy_budget": BUDGET}), data)
    mixed_acc = test_acc(mixed)
    record = mixed.slimkit_quantization
    floats = [entry["layer"] for entry in record.get("float_layers", [])]
    rows.append({"what": f"mixed precision (budget {BUDGET:.0%})", "bits": LOW_BITS,
                 "test_acc": mixed_acc, "drop_pt": (base - mixed_acc) * 100,
                 "note": f"float: {floats}"})  # fmt: skip

    bars = [
        {"bar": f"QAT recovers of the {LOW_BITS}-bit PTQ loss", "target": f">= {MIN_RECOVERY}",
         "measured": recovery, "met": recovery >= MIN_RECOVERY},
        {"bar": "mixed precision meets its budget on the test set", "target": f"drop <= {BUDGET}",
         "measured": base - mixed_acc, "met": base - mixed_acc <= BUDGET},
        {"bar": "int8 PTQ (minmax) drop", "target": "<= 0.3 pt",
         "measured": rows[1]["drop_pt"], "met": rows[1]["drop_pt"] <= 0.3},
    ]  # fmt: skip
    return emit("quantize_torch", args, rows, bars)


if __name__ == "__main__":
    sys.exit(main())
