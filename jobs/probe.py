"""The probe job: an audit config's training set and encoder → the paper's probe sets → C_T per probe and layer.

Laptop:   python jobs/probe.py --config jobs/configs/default.yaml
Cluster:  ray job submit --working-dir . -- python jobs/probe.py --config jobs/configs/cifar10_vitb16.yaml \
              --out s3://bucket/probes/vitb16
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root, for `ray job submit --working-dir .`

from memray.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["probe", *sys.argv[1:]]))
