"""The domain classifier's share of a generated folder's samples drawn in their asked class.

For the issue's check (`genforge generate mnist5k-ddpm@champion -n 100 --label 7 --guidance-scale 3`):
reads the folder `genforge generate` wrote (``serving.generator.iter_samples``: every shard, sha256
checked; images uint8 N x C x H x W and the asked labels int64 N), classifies the images with the
project's own domain classifier (``catalog.classifier_cache`` of --project, the one `evaluate` uses,
trained once per data version), and prints the share assigned to their asked label and the predicted
class counts. ``--json`` also writes them.

    python -m benchmarks.ddpm_label_share OUT_DIR [--project .] [--json share.json]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out_dir", type=Path, help="a folder `genforge generate` wrote")
    ap.add_argument("--project", type=Path, default=Path("."), help="the project (prepared data, classifier cache)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    import numpy as np

    from benchmarks._ddpm_cache import Scorer
    from serving.generator import iter_samples

    parts = list(iter_samples(args.out_dir))
    images = np.concatenate([p[0] for p in parts]).astype(np.float32) / 255.0
    labels = np.concatenate([p[1] for p in parts])
    if (labels < 0).any():
        raise SystemExit(f"error: {args.out_dir}: unlabelled samples (an unconditional model); nothing to score")
    scorer = Scorer(True, root=args.project.resolve())
    _, logits = scorer._extract(scorer.clf, images)
    predicted = logits.argmax(1)
    share = float((predicted == labels).mean())
    counts = {int(c): int((predicted == c).sum()) for c in np.unique(predicted)}
    asked = sorted({int(v) for v in np.unique(labels)})
    print(f"{args.out_dir}: {len(labels)} samples, asked {asked if len(asked) > 1 else asked[0]}; the classifier "
          f"(test accuracy {scorer.classifier_accuracy:.4f}) assigns {share:.1%} to the asked class; predicted "
          f"counts {counts}")
    if args.json:
        Path(args.json).write_text(json.dumps({"n": len(labels), "asked": asked, "share": share, "counts": counts,
                                               "classifier_test_accuracy": scorer.classifier_accuracy}, indent=1))


if __name__ == "__main__":
    main()
