"""`laffi train` that dies right after its first checkpoint, for tests/distributed/test_distributed.py.

    torchrun --standalone --nproc_per_node 2 tests/support/launched_crash.py train RUN --system sft

Every process exits with code 3 once the checkpoint is on disk, as a crashed job would.
"""

import sys

import laffi.stages.train
from laffi.cli import main

real_save = laffi.stages.train.save_checkpoint


def save_then_die(*args, **kwargs):
    real_save(*args, **kwargs)
    sys.exit(3)


laffi.stages.train.save_checkpoint = save_then_die
sys.exit(main(sys.argv[1:]))
