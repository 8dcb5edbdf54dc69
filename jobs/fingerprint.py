"""The fingerprint job: the audit job plus C_T-layer curves, a gallery of the labelled generated sets and the
attribution of the unlabelled ones (or of every set, against a saved gallery with --gallery).

Laptop:   python jobs/fingerprint.py --config jobs/configs/default.yaml
Cluster:  ray job submit --working-dir . -- python jobs/fingerprint.py --config CONFIG.yaml [--gallery URL]
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root, for `ray job submit --working-dir .`

from memray.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["audit", "--fingerprint", *sys.argv[1:]]))
