"""The audit job: YAML config → memray's Ray pipeline → Parquet tables.

Laptop:   python jobs/audit.py --config jobs/configs/default.yaml
Cluster:  ray job submit --working-dir . -- python jobs/audit.py --config jobs/configs/cifar10_vitb16.yaml
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root, for `ray job submit --working-dir .`

from memray.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["audit", *sys.argv[1:]]))
