"""``python -m maskcl …``: the ``maskcl`` command, also what ``torchrun`` starts per process::

    torchrun --nproc_per_node=4 -m maskcl train --out runs/ddp --set train.batch_size=64
"""

from __future__ import annotations

import sys

from maskcl.cli import main

if __name__ == "__main__":
    sys.exit(main())
